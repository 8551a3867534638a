"""Where rollout records live: the `RolloutStore` port and a folder-of-JSON-files implementation.

The store is the rollout engine's only memory; the engine re-reads it after a restart and carries on.
`save` is a compare-and-set on `revision`, so a writer holding an old copy (another replica, a command
racing a tick) gets `StaleRecord` instead of silently overwriting newer progress.

`FileRolloutStore` suits a lab controller and the tests; the SQL store (phase 2, `models.py`) keeps the
same contract on the controller's database.
"""

from __future__ import annotations

import json
import os
import re
import threading
from dataclasses import replace
from pathlib import Path
from typing import Protocol

from controller.rollouts.codec import record_from_json, record_to_json
from controller.rollouts.errors import PlanError, RolloutNotFound, StaleRecord
from controller.rollouts.records import RolloutRecord

ROLLOUT_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class RolloutStore(Protocol):
    def create(self, record: RolloutRecord) -> RolloutRecord:
        """Store a new rollout (revision 1); StaleRecord if the id exists."""

    def load(self, rollout_id: str) -> RolloutRecord:
        """The stored record; RolloutNotFound if there is none."""

    def save(self, record: RolloutRecord) -> RolloutRecord:
        """Store `record` if its revision is the stored one; returns it with the next revision."""

    def list_ids(self, active_only: bool = False) -> list[str]: ...


class FileRolloutStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def create(self, record: RolloutRecord) -> RolloutRecord:
        _check_id(record.rollout_id)
        with self._lock:
            if self._path(record.rollout_id).exists():
                raise StaleRecord(f"rollout {record.rollout_id} already exists")
            stored = replace(record, revision=1)
            self._write(stored)
            return stored

    def load(self, rollout_id: str) -> RolloutRecord:
        _check_id(rollout_id)
        with self._lock:
            return self._read(rollout_id)

    def save(self, record: RolloutRecord) -> RolloutRecord:
        with self._lock:
            current = self._read(record.rollout_id)
            if current.revision != record.revision:
                raise StaleRecord(
                    f"rollout {record.rollout_id}: expected revision {record.revision}, stored {current.revision}"
                )
            stored = replace(record, revision=record.revision + 1)
            self._write(stored)
            return stored

    def list_ids(self, active_only: bool = False) -> list[str]:
        with self._lock:
            ids = sorted(p.stem for p in self.root.glob("*.json"))
            if not active_only:
                return ids
            return [i for i in ids if not self._read(i).state.terminal]

    def _path(self, rollout_id: str) -> Path:
        return self.root / f"{rollout_id}.json"

    def _read(self, rollout_id: str) -> RolloutRecord:
        try:
            raw = json.loads(self._path(rollout_id).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise RolloutNotFound(f"no rollout {rollout_id!r}") from None
        except (OSError, json.JSONDecodeError) as e:
            raise PlanError(f"rollout {rollout_id} on disk is unreadable: {e}") from e
        return record_from_json(raw)

    def _write(self, record: RolloutRecord) -> None:
        path = self._path(record.rollout_id)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(record_to_json(record), f, separators=(",", ":"))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)


def _check_id(rollout_id: str) -> None:
    if not ROLLOUT_ID_RE.match(rollout_id):
        raise PlanError(f"rollout id {rollout_id!r} must match {ROLLOUT_ID_RE.pattern}")
