"""Signed targets that a runtime loads from more than one file, unpacked into the slot before it appears.

The build pipeline ships an OpenVINO IR variant as one artifact (`format: "openvino-ir-tar"` in the
target's custom fields): an uncompressed tar holding exactly `model.xml` and `model.bin`. The stager
verifies the package's signed hash first, then this module extracts it, strictly: regular files with
those two names only, each at most `max_member_bytes`, no links, no paths, no other members. Files are
fsynced before the slot folder is renamed into place, so a slot that exists is complete.
"""

from __future__ import annotations

import os
import shutil
import tarfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from agent.staging.errors import PackageError

OPENVINO_IR_TAR = "openvino-ir-tar"
OPENVINO_MEMBERS = ("model.xml", "model.bin")
PACKAGE_FORMATS = (OPENVINO_IR_TAR,)


def package_format(custom: Mapping[str, Any]) -> str | None:
    """The package format of a target that must be unpacked, or None for a single-file model."""
    fmt = custom.get("format")
    return fmt if isinstance(fmt, str) and fmt in PACKAGE_FORMATS else None


def entry_for(custom: Mapping[str, Any]) -> str:
    """The file in the slot a runtime loads ("" means the signed file itself)."""
    return "model.xml" if package_format(custom) == OPENVINO_IR_TAR else ""


def runtime_extra(custom: Mapping[str, Any]) -> dict[str, str]:
    """Build settings a runtime needs from the signed fields (TensorRT builds its engine on the device)."""
    if custom.get("runtime") != "tensorrt":
        return {}
    extra = {"precision": str(custom.get("trt_precision", custom.get("precision", "fp16")))}
    for key in ("trt_min_batch", "trt_opt_batch", "trt_max_batch", "trt_workspace_mb"):
        value = custom.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            extra[key.removeprefix("trt_")] = str(value)
    return extra


def unpack(fmt: str, package: Path, dest: Path, max_member_bytes: int = 4 * 1024**3) -> None:
    if fmt != OPENVINO_IR_TAR:
        raise PackageError(f"{package.name}: unknown package format {fmt!r}")
    seen: list[str] = []
    try:
        with tarfile.open(package, mode="r:") as tar:  # "r:" = uncompressed only, read sequentially
            for member in tar:
                if member.name not in OPENVINO_MEMBERS or not member.isfile() or member.name in seen:
                    raise PackageError(f"{package.name}: unexpected member {member.name!r} "
                                       f"(expected regular files {OPENVINO_MEMBERS})")
                if member.size > max_member_bytes:
                    raise PackageError(f"{package.name}: {member.name} is {member.size} bytes, "
                                       f"over {max_member_bytes}")
                source = tar.extractfile(member)
                if source is None:
                    raise PackageError(f"{package.name}: {member.name} cannot be read")
                with open(dest / member.name, "wb") as out:
                    shutil.copyfileobj(source, out, 1 << 20)
                    out.flush()
                    os.fsync(out.fileno())
                seen.append(member.name)
    except (tarfile.TarError, OSError) as e:
        raise PackageError(f"{package.name}: not a readable OpenVINO IR package: {e}") from e
    if sorted(seen) != sorted(OPENVINO_MEMBERS):
        raise PackageError(f"{package.name}: package needs {OPENVINO_MEMBERS}, has {seen}")
