"""What an upload must satisfy before anything is stored: the release's name, version and notes, and the
size of each uploaded part. The ONNX and golden-set checks belong to the build pipeline, not here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import BinaryIO

from controller.errors import InvalidInput, PayloadTooLarge

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")
VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$")


@dataclass(frozen=True)
class ReleaseMeta:
    name: str
    version: str
    task: str = "classification"
    preprocessing: str = ""
    min_accuracy: float | None = None

    def checked(self) -> ReleaseMeta:
        if not NAME_RE.match(self.name):
            raise InvalidInput(f"model name {self.name!r} must match {NAME_RE.pattern}")
        if not VERSION_RE.match(self.version):
            raise InvalidInput(f"model version {self.version!r} must match {VERSION_RE.pattern}")
        if self.min_accuracy is not None and not 0.0 <= self.min_accuracy <= 1.0:
            raise InvalidInput(f"min_accuracy must be within [0, 1]; got {self.min_accuracy}")
        if len(self.task) > 64 or len(self.preprocessing) > 8192:
            raise InvalidInput("task is limited to 64 characters and preprocessing notes to 8192")
        return self


def read_limited(stream: BinaryIO, max_bytes: int, what: str) -> bytes:
    """The whole upload, refused once it passes `max_bytes` (read one byte over, never the rest)."""
    data = stream.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise PayloadTooLarge(
            f"{what} is over the limit of {max_bytes} bytes", details={"max_bytes": max_bytes}
        )
    if not data:
        raise InvalidInput(f"{what} is empty")
    return data
