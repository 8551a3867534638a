"""Database tables of the rollout engine (SQLAlchemy 2, on the platform's `Base`).

`rollouts` keeps one row per rollout: a few columns to list and filter by, and the whole record as
JSON (`controller.rollouts.codec`), so the state machine's persisted form has one definition. `revision`
is the compare-and-set counter `SqlRolloutStore.save` checks in its UPDATE.

`assignments` is the director assignment ledger: each device's newest signed assignment, written
before it is published, so versions only ever grow (see `controller.rollouts.assigner`).

Column names are persisted values: rename only through a migration.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Integer, LargeBinary, String
from sqlalchemy.orm import Mapped, mapped_column

from controller.db.base import Base, UtcDateTime, utcnow


class RolloutRow(Base):
    __tablename__ = "rollouts"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    state: Mapped[str] = mapped_column(String(16), index=True)
    release_model: Mapped[str] = mapped_column(String(128))
    release_version: Mapped[str] = mapped_column(String(64))
    created_by: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    revision: Mapped[int] = mapped_column(Integer)
    record: Mapped[dict[str, Any]] = mapped_column(JSON)
    # The operator's device-policy overrides (`device_policies.PolicyOverrides.to_json`), kept out of
    # `record` so signing reads one small column per assignment; NULL: none, the rollout signs defaults.
    device_policies: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True), nullable=True)


class AssignmentRow(Base):
    __tablename__ = "assignments"

    device_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    version: Mapped[int] = mapped_column(BigInteger)
    release_model: Mapped[str] = mapped_column(String(128))
    release_version: Mapped[str] = mapped_column(String(64))
    rollout_id: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime())
    issued_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    payload: Mapped[bytes] = mapped_column(LargeBinary)
