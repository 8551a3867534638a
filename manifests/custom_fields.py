"""The `custom` fields every image-repository target carries, checked the same way by writer and verifier.

| field             | variant                                  | golden            |
|-------------------|------------------------------------------|-------------------|
| kind              | "variant"                                | "golden"          |
| model, version    | must equal the name's `<model>/<version>`| same              |
| release_counter   | int >= 0 (offline-signed downgrade floor)| same              |
| runtime           | onnxruntime / openvino / tensorrt        | -                 |
| precision         | fp32 / fp16 / int8                       | -                 |
| arch, accelerator, runtime_version | optional strings        | -                 |
| accuracy          | optional decimal string in [0, 1], e.g. "0.973100" (build time) | - |

Other keys are allowed (the build pipeline may record more), but must be strings, integers, booleans or
flat lists of them. TUF signs OLPC canonical JSON, which has no floating-point numbers: that is why the
accuracy travels as a string (`normalize_custom` converts a float for the writer).
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
        raise _refuse(
            name,
            f"custom model/version {custom.get('model')!r}/{custom.get('version')!r} "
            f"differ from the name's {model!r}/{version!r}",
        )
    counter = custom.get("release_counter")
    if isinstance(counter, bool) or not isinstance(counter, int) or counter < 0:
        raise _refuse(name, f"custom.release_counter must be an integer >= 0, got {counter!r}")
    if kind == "variant":
        if custom.get("runtime") not in RUNTIMES:
            raise _refuse(name, f"custom.runtime must be one of {RUNTIMES}, got {custom.get('runtime')!r}")
        if custom.get("precision") not in PRECISIONS:
            raise _refuse(
                name, f"custom.precision must be one of {PRECISIONS}, got {custom.get('precision')!r}"
            )
    for key in _OPTIONAL_STRINGS:
        if key in custom and not isinstance(custom[key], str):
            raise _refuse(name, f"custom.{key} must be a string, got {custom[key]!r}")
    accuracy = custom.get("accuracy")
    if accuracy is not None and parse_accuracy(accuracy) is None:
        raise _refuse(name, f"custom.accuracy must be a decimal string in [0, 1], got {accuracy!r}")
    for key, value in custom.items():
        flat = (
            isinstance(value, (str, int, bool))
            or value is None
            or (isinstance(value, list) and all(isinstance(v, (str, int, bool)) for v in value))
        )
        if not flat:
            raise _refuse(
                name,
                f"custom.{key} must be a string, integer, boolean or a flat list of them "
                "(canonical JSON has no floats)",
            )
    return custom


def parse_accuracy(value: object) -> float | None:
    """The accuracy as a float, or None if it is not a decimal string in [0, 1]."""
    if not isinstance(value, str) or len(value) > 32:
        return None
    try:
        x = float(value)
    except ValueError:
        return None
    return x if 0.0 <= x <= 1.0 else None


def normalize_custom(custom: Mapping[str, Any]) -> dict[str, Any]:
    """Writer-side: a float accuracy becomes its 6-decimal string; anything else is left to check_custom."""
    out = dict(custom)
    accuracy = out.get("accuracy")
    if isinstance(accuracy, float) or (isinstance(accuracy, int) and not isinstance(accuracy, bool)):
        out["accuracy"] = f"{float(accuracy):.6f}"
    return out
