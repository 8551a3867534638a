"""Model slots on the model disk: content-addressed folders plus `current` and `previous` pointers.

    <root>/models/<sha256>/<file>     a complete, hash-verified model (renamed in whole, never edited)
    <root>/current                    JSON pointer to the slot being served
    <root>/previous                   JSON pointer to the last committed slot while an update is on probation

A slot folder appears only through `adopt`, which renames an fsynced, verified file into it, so a
slot that exists is complete. Pointers are single small files replaced atomically, so after a power
cut each one names a whole slot or is absent. The previous slot is deleted only after the new one
commits (`discard`), which is the driver's business, not this module's.

Errors: `SlotError` (a missing slot, a malformed pointer; retry: no).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

from agent.state.journal import fsync_dir, write_atomic

log = logging.getLogger(__name__)
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_FILE_NAME = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
MAX_POINTER_BYTES = 64 * 1024


class SlotError(Exception):
    """A slot or pointer is missing or malformed (retry: no)."""


@dataclass(frozen=True)
class ModelRef:
    """What a pointer says: the slot plus what the signed target said about it."""

    sha256: str
    file_name: str
    target: str
    runtime: str
    precision: str
    model: str
    version: str
    device: str = "cpu"
    entry: str = ""  # the file a runtime loads when it is not the signed file (an unpacked package)

    def __post_init__(self) -> None:
        if not _SHA256.match(self.sha256):
            raise SlotError(f"slot sha256 must be 64 lowercase hex digits, got {self.sha256!r}")
        for name in (self.file_name, self.entry or self.file_name):
            if not _FILE_NAME.match(name) or name in (".", ".."):
                raise SlotError(f"slot file name {name!r} is not a plain file name")


class SlotStore(Protocol):
    """Where verified models live and which one is served; see FileSlotStore."""

    def has(self, sha256: str) -> bool: ...

    def path(self, ref: ModelRef) -> Path: ...

    def file_path(self, sha256: str, file_name: str) -> Path: ...

    def adopt(self, sha256: str, file_name: str, staged: Path,
              unpack: Callable[[Path, Path], None] | None = None) -> Path: ...

    def current(self) -> ModelRef | None: ...

    def previous(self) -> ModelRef | None: ...

    def set_current(self, ref: ModelRef | None) -> None: ...

    def set_previous(self, ref: ModelRef | None) -> None: ...

    def discard(self, sha256: str) -> None: ...

    def slots(self) -> tuple[str, ...]: ...

    def verify(self, ref: ModelRef) -> bool: ...


class FileSlotStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.models_dir = root / "models"
        self.models_dir.mkdir(parents=True, exist_ok=True)
        for leftover in self.models_dir.glob(".building-*"):  # a slot whose assembly a crash cut short
            shutil.rmtree(leftover, ignore_errors=True)

    def _slot_dir(self, sha256: str) -> Path:
        if not _SHA256.match(sha256):
            raise SlotError(f"slot sha256 must be 64 lowercase hex digits, got {sha256!r}")
        return self.models_dir / sha256

    def has(self, sha256: str) -> bool:
        slot = self._slot_dir(sha256)
        return slot.is_dir() and any(p.is_file() for p in slot.iterdir())

    def path(self, ref: ModelRef) -> Path:
        """What a runtime loads: the signed file, or the entry unpacked from it."""
        return self._slot_dir(ref.sha256) / (ref.entry or ref.file_name)

    def file_path(self, sha256: str, file_name: str) -> Path:
        return self._slot_dir(sha256) / file_name

    def adopt(self, sha256: str, file_name: str, staged: Path,
              unpack: Callable[[Path, Path], None] | None = None) -> Path:
        """Move a verified, fsynced staged file into its slot; `unpack(file, folder)` may add files.

        The slot is assembled in a hidden folder and renamed into place in one step, so a slot that
        exists is complete, with or without unpacked files.
        """
        if not _FILE_NAME.match(file_name) or file_name in (".", ".."):
            raise SlotError(f"slot file name {file_name!r} is not a plain file name")
        slot = self._slot_dir(sha256)
        building = self.models_dir / f".building-{sha256}"
        if building.exists():
            shutil.rmtree(building)
        building.mkdir()
        try:
            os.replace(staged, building / file_name)
            if unpack is not None:
                unpack(building / file_name, building)
            fsync_dir(building)
            if slot.exists():  # an empty or partial leftover from before this store assembled slots
                shutil.rmtree(slot)
            os.rename(building, slot)
        except BaseException:
            shutil.rmtree(building, ignore_errors=True)
            raise
        fsync_dir(self.models_dir)
        return slot / file_name

    def _read_pointer(self, name: str) -> ModelRef | None:
        path = self.root / name
        try:
            with open(path, "rb") as f:
                data = f.read(MAX_POINTER_BYTES + 1)
        except FileNotFoundError:
            return None
        if len(data) > MAX_POINTER_BYTES:
            raise SlotError(f"pointer {path} exceeds {MAX_POINTER_BYTES} bytes")
        try:
            doc = json.loads(data)
            if not isinstance(doc, dict):
                raise TypeError(f"expected an object, got {type(doc).__name__}")
            optional = {"device", "entry"}
            fields = {k: doc[k] for k in ModelRef.__dataclass_fields__ if k in doc or k not in optional}
            if not all(isinstance(v, str) for v in fields.values()):
                raise TypeError("every pointer field must be a string")
            return ModelRef(**fields)
        except (ValueError, KeyError, TypeError) as e:
            raise SlotError(f"pointer {path} is malformed: {e}") from e

    def _write_pointer(self, name: str, ref: ModelRef | None) -> None:
        path = self.root / name
        if ref is None:
            try:
                path.unlink()
            except FileNotFoundError:
                return
            fsync_dir(self.root)
            return
        write_atomic(path, json.dumps(asdict(ref), sort_keys=True).encode("utf-8"))

    def current(self) -> ModelRef | None:
        return self._read_pointer("current")

    def previous(self) -> ModelRef | None:
        return self._read_pointer("previous")

    def set_current(self, ref: ModelRef | None) -> None:
        self._write_pointer("current", ref)

    def set_previous(self, ref: ModelRef | None) -> None:
        self._write_pointer("previous", ref)

    def discard(self, sha256: str) -> None:
        """Delete a slot unless a pointer still names it (the served model is never deleted)."""
        names = {r.sha256 for r in (self.current(), self.previous()) if r is not None}
        if sha256 in names:
            return
        slot = self._slot_dir(sha256)
        if slot.exists():
            shutil.rmtree(slot)
            fsync_dir(self.models_dir)

    def slots(self) -> tuple[str, ...]:
        return tuple(sorted(p.name for p in self.models_dir.iterdir() if _SHA256.match(p.name)))

    def verify(self, ref: ModelRef) -> bool:
        """Re-hash a slot's file: after a crash the agent serves only a model that still matches."""
        path = self.file_path(ref.sha256, ref.file_name)
        if ref.entry and not self.file_path(ref.sha256, ref.entry).is_file():
            return False
        digest = hashlib.sha256()
        try:
            with open(path, "rb") as f:
                while chunk := f.read(1 << 20):
                    digest.update(chunk)
        except FileNotFoundError:
            return False
        return digest.hexdigest() == ref.sha256


def heal_current(slots: SlotStore) -> None:
    """At start-up, serve only a slot whose bytes still hash right; else fall back to `previous`."""
    try:
        current = slots.current()
        if current is None or slots.verify(current):
            return
        log.error("current model %s fails its hash check", current.sha256)
        previous = slots.previous()
        if previous is not None and slots.verify(previous):
            slots.set_current(previous)
    except SlotError as e:
        log.error("model pointers unreadable: %s", e)
