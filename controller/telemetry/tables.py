"""Telemetry tables: received batches (dedupe, sample-capture counters), model latency points and
system points.

Model points hold the latency histogram as sparse bucket counts (JSON `{"<index>": count}`) in the
fixed layout of `agent.metrics.histogram`; merging rows is adding counts, so every query over any set
of devices, versions and time windows yields exact percentiles to bucket resolution.

`resolution_s` says what a row covers: the device's sampling interval for raw rows, 60 for minute
rows, 3600 for hour rows (the retention job rolls raw → 1 min → 1 h). Rows are unique per
(device, series, resolution, start), so a point delivered twice (a retried batch, a device that
crashed between its spool and its outbox) is stored once.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Float, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from controller.db.base import Base, UtcDateTime, utcnow

_ID = BigInteger().with_variant(Integer, "sqlite")


class TelemetryBatchRow(Base):
    """One accepted batch: the persistent half of deduplication by (device, stream, seq)."""

    __tablename__ = "telemetry_batches"
    __table_args__ = (UniqueConstraint("device_id", "stream", "seq", name="uq_telemetry_batches_key"),)

    id: Mapped[int] = mapped_column(_ID, primary_key=True, autoincrement=True)
    device_id: Mapped[str] = mapped_column(String(64), index=True)
    stream: Mapped[str] = mapped_column(String(64))
    seq: Mapped[int] = mapped_column(BigInteger)
    received_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow, index=True)
    sent_at: Mapped[datetime] = mapped_column(UtcDateTime())
    points: Mapped[int] = mapped_column(Integer)
    dropped_points: Mapped[int] = mapped_column(BigInteger, default=0)
    rolled_up_points: Mapped[int] = mapped_column(BigInteger, default=0)
    # The batch's sample-capture counters (`CaptureCounts.to_dict()`); NULL when the agent sent none.
    capture: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True), nullable=True)


class ModelPointRow(Base):
    __tablename__ = "telemetry_model_points"
    __table_args__ = (
        UniqueConstraint("device_id", "model", "version", "variant", "resolution_s", "start_at",
                         name="uq_telemetry_model_points_key"),
    )

    id: Mapped[int] = mapped_column(_ID, primary_key=True, autoincrement=True)
    device_id: Mapped[str] = mapped_column(String(64), index=True)
    hardware_class: Mapped[str] = mapped_column(String(64), default="", index=True)
    model: Mapped[str] = mapped_column(String(128), index=True)
    version: Mapped[str] = mapped_column(String(128))
    variant: Mapped[str] = mapped_column(String(128))
    resolution_s: Mapped[int] = mapped_column(Integer)
    start_at: Mapped[datetime] = mapped_column(UtcDateTime(), index=True)
    end_at: Mapped[datetime] = mapped_column(UtcDateTime())
    requests: Mapped[int] = mapped_column(BigInteger)
    errors: Mapped[int] = mapped_column(BigInteger)
    latency_count: Mapped[int] = mapped_column(BigInteger)
    latency_sum_s: Mapped[float] = mapped_column(Float)
    latency_max_s: Mapped[float] = mapped_column(Float)
    buckets: Mapped[dict[str, Any]] = mapped_column(JSON)


class SystemPointRow(Base):
    __tablename__ = "telemetry_system_points"
    __table_args__ = (
        UniqueConstraint("device_id", "resolution_s", "start_at", name="uq_telemetry_system_points_key"),
    )

    id: Mapped[int] = mapped_column(_ID, primary_key=True, autoincrement=True)
    device_id: Mapped[str] = mapped_column(String(64), index=True)
    resolution_s: Mapped[int] = mapped_column(Integer)
    start_at: Mapped[datetime] = mapped_column(UtcDateTime(), index=True)
    end_at: Mapped[datetime] = mapped_column(UtcDateTime())
    samples: Mapped[int] = mapped_column(Integer)
    cpu_pct: Mapped[float | None] = mapped_column(Float, nullable=True)
    mem_used_mb: Mapped[float | None] = mapped_column(Float, nullable=True)
    disk_used_pct: Mapped[float | None] = mapped_column(Float, nullable=True)
    temp_max_c: Mapped[float | None] = mapped_column(Float, nullable=True)
    temps_c: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
