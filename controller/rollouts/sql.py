"""The rollout store and assignment ledger on the controller's database (SQLite or PostgreSQL).

Same contracts as the file implementations (`store.FileRolloutStore`, `assigner.FileAssignmentLedger`):

- `SqlRolloutStore.save` is one `UPDATE … WHERE id = ? AND revision = ?`; zero rows updated means
  another writer got there first (`StaleRecord`), which is how two replicas or a command racing a tick
  are kept from overwriting each other without holding locks across a step.
- `SqlAssignmentLedger.record` inserts or raises the version in one transaction and refuses a version
  that is not above the stored one; it commits before the caller publishes.

A rollout's device-policy overrides live in their own column (`RolloutRow.device_policies`), not in the
record JSON: the director reads them for every assignment it signs (`service.release_policies`), and a
rollout without overrides leaves the column NULL and its record exactly as before.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
from dataclasses import replace
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import Connection, Engine, select, text, update
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from controller.rollouts.assigner import LedgerEntry
from controller.rollouts.codec import record_from_json, record_to_json
from controller.rollouts.errors import RolloutError, RolloutNotFound, StaleRecord
from controller.rollouts.models import AssignmentRow, RolloutRow
from controller.rollouts.records import RolloutRecord, RolloutState
from controller.rollouts.store import _check_id
from manifests.assignment import ReleaseRef

_TERMINAL = [s.value for s in RolloutState if s.terminal]


def _utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, tz=timezone.utc)


class SqlRolloutStore:
    def __init__(self, session_factory: sessionmaker[Session]) -> None:
        self._sessions = session_factory

    def create(self, record: RolloutRecord) -> RolloutRecord:
        _check_id(record.rollout_id)
        stored = _with_revision(record, 1)
        body, overrides = _split(stored)
        row = RolloutRow(
            id=record.rollout_id, state=record.state.value, release_model=record.spec.release.model,
            release_version=record.spec.release.version, created_by=record.created_by,
            created_at=_utc(record.created_at), updated_at=_utc(record.created_at), revision=1,
            record=body, device_policies=overrides,
        )
        with self._sessions() as session:
            session.add(row)
            try:
                session.commit()
            except IntegrityError as e:
                raise StaleRecord(f"rollout {record.rollout_id} already exists") from e
        return stored

    def load(self, rollout_id: str) -> RolloutRecord:
        with self._sessions() as session:
            row = session.get(RolloutRow, rollout_id)
            if row is None:
                raise RolloutNotFound(f"no rollout {rollout_id!r}")
            return _join(row.record, row.device_policies)

    def save(self, record: RolloutRecord) -> RolloutRecord:
        stored = _with_revision(record, record.revision + 1)
        body, overrides = _split(stored)
        with self._sessions() as session:
            result = session.execute(
                update(RolloutRow)
                .where(RolloutRow.id == record.rollout_id, RolloutRow.revision == record.revision)
                .values(state=record.state.value, revision=stored.revision, record=body,
                        device_policies=overrides,
                        updated_at=datetime.now(timezone.utc))
            )
            if result.rowcount != 1:  # type: ignore[attr-defined]
                session.rollback()
                if session.get(RolloutRow, record.rollout_id) is None:
                    raise RolloutNotFound(f"no rollout {record.rollout_id!r}")
                raise StaleRecord(f"rollout {record.rollout_id}: revision {record.revision} is no longer current")
            session.commit()
        return stored

    def list_ids(self, active_only: bool = False) -> list[str]:
        query = select(RolloutRow.id).order_by(RolloutRow.created_at, RolloutRow.id)
        if active_only:
            query = query.where(RolloutRow.state.not_in(_TERMINAL))
        with self._sessions() as session:
            return list(session.scalars(query))


class SqlAssignmentLedger:
    def __init__(self, session_factory: sessionmaker[Session]) -> None:
        self._sessions = session_factory

    def latest(self, device_id: str) -> LedgerEntry | None:
        with self._sessions() as session:
            row = session.get(AssignmentRow, device_id)
            if row is None:
                return None
            return LedgerEntry(row.version, ReleaseRef(row.release_model, row.release_version), row.rollout_id,
                               row.expires_at.timestamp(), bytes(row.payload))

    def record(self, device_id: str, entry: LedgerEntry) -> None:
        with self._sessions() as session:
            row = session.get(AssignmentRow, device_id, with_for_update=True)
            if row is not None and entry.version <= row.version:
                raise RolloutError(f"assignment version {entry.version} for {device_id} is not above "
                                   f"the recorded {row.version}")
            if row is None:
                row = AssignmentRow(device_id=device_id)
                session.add(row)
            row.version = entry.version
            row.release_model = entry.release.model
            row.release_version = entry.release.version
            row.rollout_id = entry.rollout_id
            row.expires_at = _utc(entry.expires_at)
            row.issued_at = datetime.now(timezone.utc)
            row.payload = entry.payload
            try:
                session.commit()
            except IntegrityError as e:  # a concurrent first assignment for the same device
                raise RolloutError(f"concurrent assignment for {device_id}: {e}") from e


class PgRolloutLeases:
    """One replica drives each rollout: a PostgreSQL session-level advisory lock per rollout id.

    `holds(rollout_id)` takes the lock the first time it is free and keeps it on one dedicated
    connection, so the same replica keeps driving that rollout; if the replica dies its connection
    closes, the lock goes with it and another replica's next step takes over. Without the lock a
    second replica would still be safe (revisions are compare-and-set, the ledger only moves forward),
    only wasteful. On SQLite (one process) every rollout is held.
    """

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._connection: Connection | None = None
        self._held: set[str] = set()
        self._lock = threading.Lock()

    def holds(self, rollout_id: str) -> bool:
        if self._engine.dialect.name != "postgresql":
            return True
        with self._lock:
            if rollout_id in self._held:
                return True
            try:
                if self._connection is None or self._connection.closed:
                    self._connection = self._engine.connect().execution_options(isolation_level="AUTOCOMMIT")
                    self._held.clear()
                key = int.from_bytes(hashlib.sha256(f"edgefleet-rollout:{rollout_id}".encode()).digest()[:8],
                                     "big", signed=True)
                got = bool(self._connection.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar())
            except DBAPIError:
                self.close()  # a broken connection lost every lock it held
                return False
            if got:
                self._held.add(rollout_id)
            return got

    def close(self) -> None:
        """Give every lock back (a pooled connection would otherwise keep them)."""
        if self._connection is not None:
            with contextlib.suppress(DBAPIError):
                self._connection.execute(text("SELECT pg_advisory_unlock_all()"))
            with contextlib.suppress(DBAPIError):
                self._connection.close()
        self._connection = None
        self._held.clear()


def _with_revision(record: RolloutRecord, revision: int) -> RolloutRecord:
    return replace(record, revision=revision)


def _split(record: RolloutRecord) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The record JSON without the overrides, and the overrides (None when the operator set none)."""
    body = record_to_json(record)
    return body, body["spec"].pop("device_policies", None)


def _join(body: dict[str, Any], overrides: dict[str, Any] | None) -> RolloutRecord:
    if overrides is None:
        return record_from_json(body)
    return record_from_json({**body, "spec": {**body["spec"], "device_policies": overrides}})
