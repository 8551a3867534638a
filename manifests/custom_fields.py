"""The `custom` fields every image-repository target carries, checked the same way by writer and verifier.

| field             | variant                                  | golden            |
|-------------------|------------------------------------------|-------------------|
| kind              | "variant"                                | "golden"          |
| model, version    | must equal the name's `<model>/<version>`| same              |
| release_counter   | int >= 0 (offline-signed downgrade floor)| same              |
| runtime           | onnxruntime / openvino / tensorrt        | -                 |
| precision         | fp32 / fp16 / int8                       | -                 |
| arch, accelerator, runtime_version | optional strings        | -                 |
| accuracy          | optional number in [0, 1] (build time)   | -                 |

Other keys are allowed (the build pipeline may record more), but must be JSON scalars or flat lists.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from manifests.errors import Reason, TrustError

KINDS = ("variant", "golden")
RUNTIMES = ("onnxruntime", "openvino", "tensorrt")
PRECISIONS = ("fp32", "fp16", "int8")
_OPTIONAL_STRINGS = ("arch", "accelerator", "runtime_version")


def _refuse(name: str, message: str) -> TrustError:
    return TrustError(Reason.TARGET_CUSTOM_MISMATCH, f"target {name!r}: {message}")


def check_custom(name: str, custom: Mapping[str, Any]) -> Mapping[str, Any]:
    """Return `custom` if it is complete and consistent with the target `name`; else TrustError."""
    _, model, version, _ = name.split("/")
    kind = custom.get("kind")
    if kind not in KINDS:
        raise _refuse(name, f"custom.kind must be one of {KINDS}, got {kind!r}")
    if custom.get("model") != model or custom.get("version") != version:
        raise _refuse(name, f"custom model/version {custom.get('model')!r}/{custom.get('version')!r} "
                            f"differ from the name's {model!r}/{version!r}")
    counter = custom.get("release_counter")
    if isinstance(counter, bool) or not isinstance(counter, int) or counter < 0:
        raise _refuse(name, f"custom.release_counter must be an integer >= 0, got {counter!r}")
    if kind == "variant":
        if custom.get("runtime") not in RUNTIMES:
            raise _refuse(name, f"custom.runtime must be one of {RUNTIMES}, got {custom.get('runtime')!r}")
        if custom.get("precision") not in PRECISIONS:
            raise _refuse(name, f"custom.precision must be one of {PRECISIONS}, got {custom.get('precision')!r}")
    for key in _OPTIONAL_STRINGS:
        if key in custom and not isinstance(custom[key], str):
            raise _refuse(name, f"custom.{key} must be a string, got {custom[key]!r}")
    accuracy = custom.get("accuracy")
    if accuracy is not None and (isinstance(accuracy, bool) or not isinstance(accuracy, (int, float))
                                 or not 0.0 <= accuracy <= 1.0):
        raise _refuse(name, f"custom.accuracy must be a number in [0, 1], got {accuracy!r}")
    for key, value in custom.items():
        flat = isinstance(value, (str, int, float, bool)) or value is None or (
            isinstance(value, list) and all(isinstance(v, (str, int, float, bool)) for v in value))
        if not flat:
            raise _refuse(name, f"custom.{key} must be a scalar or a flat list")
    return custom
