"""Target names: the only shapes allowed, and where a target's bytes live in the artifact store.

A target name is used by the agent and the controller to build store keys, URLs and (through the
stager) file names, so a name like `models/../../etc/passwd` or `/etc/passwd` must never get that far.
Rather than normalising and hoping, we accept exactly one shape:

    models/<model>/<version>/<variant-id>       (golden sets: models/<model>/<version>/golden.npz)

where every part starts with a letter or digit and holds only letters, digits, `.`, `_`, `+`, `-`.
That rules out `..`, `.`, empty parts, absolute paths, backslashes, NUL and any other separator.
"""

from __future__ import annotations

import re

from manifests.errors import Reason, TrustError

MAX_TARGET_NAME_BYTES = 512
_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}\Z")
TARGETS_PREFIX = "targets/"
METADATA_PREFIX = "metadata/"


def validate_target_name(name: object) -> str:
    """Return `name` if it has the one allowed shape, else raise TrustError(target_name_invalid)."""
    if not isinstance(name, str):
        raise TrustError(
            Reason.TARGET_NAME_INVALID, f"target name must be a string, got {type(name).__name__}"
        )
    if len(name.encode("utf-8")) > MAX_TARGET_NAME_BYTES:
        raise TrustError(Reason.TARGET_NAME_INVALID, f"target name longer than {MAX_TARGET_NAME_BYTES} bytes")
    parts = name.split("/")
    if len(parts) != 4 or parts[0] != "models":
        raise TrustError(
            Reason.TARGET_NAME_INVALID,
            f"target name {name!r} must look like models/<model>/<version>/<variant-id>",
        )
    for part in parts[1:]:
        if not _PART.match(part):
            raise TrustError(
                Reason.TARGET_NAME_INVALID,
                f"target name {name!r}: part {part!r} must start with a letter or digit and hold only "
                "letters, digits, '.', '_', '+', '-'",
            )
    return name


def target_store_key(name: str, sha256: str) -> str:
    """Store key of a target's bytes under consistent snapshots: the file name is prefixed by its hash.

    `models/mlp/1.0/cpu-fp32.onnx` with hash `ab..` lives at `targets/models/mlp/1.0/ab...cpu-fp32.onnx`
    (TUF's convention `<sha256>.<basename>`), so a republished name never overwrites bytes a device may
    still be downloading.
    """
    validate_target_name(name)
    head, _, base = name.rpartition("/")
    return f"{TARGETS_PREFIX}{head}/{sha256}.{base}"


def release_prefix(model: str, version: str) -> str:
    """Name prefix shared by all targets of one release."""
    return f"models/{model}/{version}/"
