"""Sample-capture counters of devices, read from the `capture` column of `telemetry_batches`.

Agents count since their daemon started (`since_s`); a batch with another `since_s` starts a new run,
and its counters start again at zero. So a device's total across restarts is the sum over its runs of
each run's last value. Counters only grow within a run, so a run's last value is its maximum: that
holds when batches arrive out of order (an outbox that drains after an outage), and the maximum of
each counter is one aggregate per run in SQL. `pending` and `pending_bytes` are gauges: they are
read from the newest batch only, never summed.

Runs are as old as the batch records kept (`retention.RetentionPolicy.batch_keep_s`); retention keeps
the highest-`seq` record of each run past that age, so a total does not shrink when old batches go.
A run is told apart by `since_s` alone: two daemon starts within the same microsecond would merge.

`fleet_current_by_model` is what /metrics exports: the current run of each device heard from lately,
summed by the model the device runs (from the device registry, as `edgefleet_devices` does). It reads
recent batches only (the `received_at` index), so a scrape costs the same whatever the history.

Reads only; nothing here writes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import and_, func, select
from sqlalchemy.orm import Session

from agent.telemetry.capture_counts import CaptureCounts
from controller.db.models import Device
from controller.telemetry.tables import TelemetryBatchRow

GAUGES = ("pending", "pending_bytes")
COUNTERS = tuple(k for k in CaptureCounts.__dataclass_fields__ if k not in ("since_s", *GAUGES))
RECENT_S = 15 * 60  # a device heard from within this long counts in /metrics (agents send every 30 s)


@dataclass(frozen=True)
class CaptureRun:
    since_s: float
    batches: int
    last_received_at: datetime
    counts: dict[str, int]  # the run's last (largest) value of each counter


@dataclass(frozen=True)
class DeviceCapture:
    """One device's capture counters: the newest batch, and totals over every stored run."""

    latest: dict[str, Any] | None  # the newest batch's `capture` object, `received_at` added
    runs: list[CaptureRun] = field(default_factory=list)

    @property
    def totals(self) -> dict[str, int]:
        return {k: sum(r.counts[k] for r in self.runs) for k in COUNTERS}


def _field(name: str) -> Any:
    # as_float on both dialects: counters are below 2**53 (the decoder's bound), exact in a double,
    # where as_integer would cast to a 32-bit INTEGER on PostgreSQL.
    return TelemetryBatchRow.capture[name].as_float()


def _newest_first() -> tuple[Any, ...]:
    """Newest run first, and in it the batch built last: an outbox that drains after a restart delivers
    the previous run's batches after the new run's, so arrival order does not say which is newest."""
    return (_field("since_s").desc(), TelemetryBatchRow.seq.desc(), TelemetryBatchRow.id.desc())


def device_capture(session: Session, device_id: str) -> DeviceCapture:
    """The device's newest capture object and its runs, oldest first (no runs when it never sent one)."""
    has_capture = and_(TelemetryBatchRow.device_id == device_id, TelemetryBatchRow.capture.is_not(None))
    since = _field("since_s")
    newest = session.execute(
        select(TelemetryBatchRow.capture, TelemetryBatchRow.received_at).where(has_capture)
        .order_by(*_newest_first()).limit(1)).first()
    if newest is None:
        return DeviceCapture(None)
    query = (select(since, func.count(), func.max(TelemetryBatchRow.received_at),
                    *[func.max(_field(k)) for k in COUNTERS])
             .where(has_capture).group_by(since).order_by(since))
    runs = [CaptureRun(float(row[0]), int(row[1]), row[2],
                       {k: int(v or 0) for k, v in zip(COUNTERS, row[3:], strict=True)})
            for row in session.execute(query)]
    latest = dict(newest[0])
    latest["received_at"] = newest[1]
    return DeviceCapture(latest, runs)


def fleet_current_by_model(session: Session, now: datetime | None = None,
                           recent_s: int = RECENT_S) -> dict[str, dict[str, int]]:
    """Per model the devices run, the sum of their current runs' counters and gauges, from each active
    device's newest batch (newest run, highest seq) received within `recent_s`. Devices that run no
    model count under ''."""
    since_at = (now or datetime.now(timezone.utc)) - timedelta(seconds=recent_s)
    ranked = (select(TelemetryBatchRow.id, func.row_number().over(
                  partition_by=TelemetryBatchRow.device_id, order_by=_newest_first()).label("rank"))
              .where(TelemetryBatchRow.received_at >= since_at, TelemetryBatchRow.capture.is_not(None))
              .subquery())
    recent = select(ranked.c.id).where(ranked.c.rank == 1).subquery()
    names = COUNTERS + GAUGES
    query = (select(Device.current_model, *[func.sum(func.coalesce(_field(k), 0.0)) for k in names])
             .select_from(recent)
             .join(TelemetryBatchRow, TelemetryBatchRow.id == recent.c.id)
             .join(Device, Device.id == TelemetryBatchRow.device_id)
             .where(Device.status == "active")
             .group_by(Device.current_model))
    out: dict[str, dict[str, int]] = {}
    for row in session.execute(query):
        totals = out.setdefault(row[0] or "", dict.fromkeys(names, 0))
        for k, v in zip(names, row[1:], strict=True):
            totals[k] += int(v or 0)
    return out
