"""The update journal: what the driver persists before every side effect, and how.

A journal is one small JSON document written atomically (temporary file in the same folder, fsync,
`os.replace`, fsync of the folder), so after a power cut the file holds either the previous record
or the new one, never a mix. `store_count` grows with every write of one deployment; the state
machine uses it to stop restart loops.

The plan (assignment + signed targets) is kept as the opaque text the engine produced from an
already verified plan: it is local state on the device's own disk, re-read only by the engine.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.state.machine import Flags, State

SCHEMA = 1
MAX_JOURNAL_BYTES = 4 * 1024 * 1024


class JournalError(Exception):
    """The journal file is unreadable or malformed (retry: no; the driver starts from IDLE)."""


@dataclass(frozen=True)
class Journal:
    state: State = State.IDLE
    store_count: int = 0
    deployment_id: str | None = None
    plan_json: str | None = None
    candidates: tuple[str, ...] = ()
    candidate_index: int = 0
    flags: Flags = field(default_factory=Flags)
    reason: str | None = None
    restarts: int = 0
    event_seq: int = 0
    rollback_to: str | None = None  # JSON pointer of the model served before ACTIVATE ("null": none)
    schema: int = SCHEMA

    def to_json(self) -> str:
        doc: dict[str, Any] = {
            "schema": self.schema,
            "state": self.state.value,
            "store_count": self.store_count,
            "deployment_id": self.deployment_id,
            "plan_json": self.plan_json,
            "candidates": list(self.candidates),
            "candidate_index": self.candidate_index,
            "flags": dataclasses.asdict(self.flags),
            "reason": self.reason,
            "restarts": self.restarts,
            "event_seq": self.event_seq,
            "rollback_to": self.rollback_to,
        }
        return json.dumps(doc, sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> Journal:
        try:
            doc = json.loads(text)
        except ValueError as e:
            raise JournalError(f"journal is not JSON: {e}") from e
        if not isinstance(doc, dict):
            raise JournalError(f"journal must be a JSON object, got {type(doc).__name__}")
        if doc.get("schema") != SCHEMA:
            raise JournalError(f"journal schema: expected {SCHEMA}, got {doc.get('schema')!r}")
        try:
            flags_doc = doc["flags"]
            known = {f.name for f in dataclasses.fields(Flags)}
            if not isinstance(flags_doc, Mapping) or set(flags_doc) - known:
                raise JournalError(f"journal flags: expected keys from {sorted(known)}, got {flags_doc!r}")
            if not all(isinstance(v, bool) for v in flags_doc.values()):
                raise JournalError("journal flags must be booleans")
            candidates = doc["candidates"]
            if not isinstance(candidates, list) or not all(isinstance(c, str) for c in candidates):
                raise JournalError("journal candidates must be a list of target names")
            journal = cls(
                state=State(doc["state"]),
                store_count=_int(doc, "store_count"),
                deployment_id=_opt_str(doc, "deployment_id"),
                plan_json=_opt_str(doc, "plan_json"),
                candidates=tuple(candidates),
                candidate_index=_int(doc, "candidate_index"),
                flags=Flags(**flags_doc),
                reason=_opt_str(doc, "reason"),
                restarts=_int(doc, "restarts"),
                event_seq=_int(doc, "event_seq"),
                rollback_to=_opt_str(doc, "rollback_to"),
            )
        except KeyError as e:
            raise JournalError(f"journal is missing {e}") from e
        except ValueError as e:
            raise JournalError(f"journal has a bad value: {e}") from e
        if journal.state is not State.IDLE and journal.deployment_id is None:
            raise JournalError(f"journal in {journal.state.value} names no deployment")
        return journal


def _int(doc: Mapping[str, Any], key: str) -> int:
    value = doc[key]
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise JournalError(f"journal {key}: expected a non-negative integer, got {value!r}")
    return value


def _opt_str(doc: Mapping[str, Any], key: str) -> str | None:
    value = doc.get(key)
    if value is not None and not isinstance(value, str):
        raise JournalError(f"journal {key}: expected a string or null, got {type(value).__name__}")
    return value


def write_atomic(path: Path, data: bytes) -> None:
    """Replace `path` with `data` so that a crash leaves either the old or the new content."""
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    """Make a rename or unlink in `path` durable (POSIX needs the directory itself synced)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class JournalFile:
    """The journal at one path; `load` returns an IDLE journal when none was written yet."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)

    def load(self) -> Journal:
        try:
            with open(self.path, "rb") as f:
                data = f.read(MAX_JOURNAL_BYTES + 1)
        except FileNotFoundError:
            return Journal()
        if len(data) > MAX_JOURNAL_BYTES:
            raise JournalError(f"journal {self.path} exceeds {MAX_JOURNAL_BYTES} bytes")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise JournalError(f"journal {self.path} is not UTF-8: {e}") from e
        return Journal.from_json(text)

    def save(self, journal: Journal) -> None:
        write_atomic(self.path, journal.to_json().encode("utf-8"))
