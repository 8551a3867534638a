"""Retention: raw points → 1-minute rows → 1-hour rows → deleted, each step in one transaction.

| rows          | kept for (default) | then                                  |
|---------------|--------------------|---------------------------------------|
| raw           | 1 day              | merged into 1-minute rows             |
| 1 minute      | 14 days            | merged into 1-hour rows               |
| 1 hour        | 400 days           | deleted                               |
| batch records | 7 days             | deleted (dedupe needs only recent ones), except the newest one of each capture run |

Merging adds request/error counts and histogram buckets (exact), averages system figures weighted by
their sample counts and keeps the peak temperature. The finer rows are deleted in the same
transaction that writes the coarser one, so every request is counted once at every moment; a coarser
row that already exists for the window (the agent rolled up while offline) is merged into.

Batch records also carry the agents' sample-capture counters, cumulative per daemon run (`capture.py`).
Among the records past their age, the newest of each (device, run) stays, so a device's capture totals
across restarts survive retention; that is one row per daemon restart, superseded when the run's next
record ages out.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import delete, func, select, tuple_
from sqlalchemy.orm import Session, sessionmaker

from controller.db.base import utcnow
from controller.telemetry.tables import ModelPointRow, SystemPointRow, TelemetryBatchRow


@dataclass(frozen=True)
class RetentionPolicy:
    raw_keep_s: int = 24 * 3600
    minute_keep_s: int = 14 * 24 * 3600
    hour_keep_s: int = 400 * 24 * 3600
    batch_keep_s: int = 7 * 24 * 3600


def _window(t: datetime, resolution_s: int) -> datetime:
    epoch = int(t.timestamp()) // resolution_s * resolution_s
    return datetime.fromtimestamp(epoch, tz=timezone.utc)


def _merge_model(target: ModelPointRow, row: ModelPointRow) -> None:
    target.requests += row.requests
    target.errors += row.errors
    target.latency_count += row.latency_count
    target.latency_sum_s += row.latency_sum_s
    target.latency_max_s = max(target.latency_max_s, row.latency_max_s)
    buckets = dict(target.buckets)
    for key, count in row.buckets.items():
        buckets[key] = int(buckets.get(key, 0)) + int(count)
    target.buckets = buckets
    target.end_at = max(target.end_at, row.end_at)


def _weighted(a: float | None, wa: int, b: float | None, wb: int) -> float | None:
    if a is None:
        return b
    if b is None:
        return a
    return (a * wa + b * wb) / (wa + wb)


def _merge_system(target: SystemPointRow, row: SystemPointRow) -> None:
    wa, wb = target.samples, row.samples
    target.cpu_pct = _weighted(target.cpu_pct, wa, row.cpu_pct, wb)
    target.mem_used_mb = _weighted(target.mem_used_mb, wa, row.mem_used_mb, wb)
    target.disk_used_pct = _weighted(target.disk_used_pct, wa, row.disk_used_pct, wb)
    temps = dict(target.temps_c)
    for zone, value in row.temps_c.items():
        temps[zone] = max(float(value), float(temps.get(zone, value)))
    target.temps_c = temps
    target.temp_max_c = max(temps.values()) if temps else None
    target.samples = wa + wb
    target.end_at = max(target.end_at, row.end_at)


def _roll(session: Session, table: Any, key_of: Callable[[Any], tuple[Any, ...]], merge: Callable[[Any, Any], None],
          copy: Callable[[Any, int, datetime], Any], finer_than: int, resolution_s: int, cutoff: datetime) -> int:
    old = session.scalars(
        select(table).where(table.resolution_s < finer_than, table.start_at < cutoff).order_by(table.start_at)
    ).all()
    if not old:
        return 0
    targets: dict[tuple[Any, ...], Any] = {}
    for row in old:
        start = _window(row.start_at, resolution_s)
        key = (*key_of(row), start)
        target = targets.get(key)
        if target is None:
            target = session.scalar(
                select(table).where(*(c == v for c, v in zip(_key_columns(table), key, strict=True)),
                                    table.resolution_s == resolution_s)
            )
            if target is None:
                target = copy(row, resolution_s, start)
                session.add(target)
                targets[key] = target
                continue
            targets[key] = target
        merge(target, row)
    for row in old:
        session.delete(row)
    return len(old)


def _key_columns(table: Any) -> tuple[Any, ...]:
    if table is ModelPointRow:
        return (ModelPointRow.device_id, ModelPointRow.model, ModelPointRow.version, ModelPointRow.variant,
                ModelPointRow.start_at)
    return (SystemPointRow.device_id, SystemPointRow.start_at)


def _model_key(row: ModelPointRow) -> tuple[Any, ...]:
    return (row.device_id, row.model, row.version, row.variant)


def _system_key(row: SystemPointRow) -> tuple[Any, ...]:
    return (row.device_id,)


def _copy_model(row: ModelPointRow, resolution_s: int, start: datetime) -> ModelPointRow:
    return ModelPointRow(device_id=row.device_id, hardware_class=row.hardware_class, model=row.model,
                         version=row.version, variant=row.variant, resolution_s=resolution_s, start_at=start,
                         end_at=row.end_at, requests=row.requests, errors=row.errors,
                         latency_count=row.latency_count, latency_sum_s=row.latency_sum_s,
                         latency_max_s=row.latency_max_s, buckets=dict(row.buckets))


def _copy_system(row: SystemPointRow, resolution_s: int, start: datetime) -> SystemPointRow:
    return SystemPointRow(device_id=row.device_id, resolution_s=resolution_s, start_at=start, end_at=row.end_at,
                          samples=row.samples, cpu_pct=row.cpu_pct, mem_used_mb=row.mem_used_mb,
                          disk_used_pct=row.disk_used_pct, temp_max_c=row.temp_max_c, temps_c=dict(row.temps_c))


def apply_retention(session_factory: sessionmaker[Session], policy: RetentionPolicy | None = None,
                    now: datetime | None = None) -> dict[str, int]:
    """Run every step once; returns how many rows each step consumed."""
    policy = policy or RetentionPolicy()
    now = now or utcnow()
    done: dict[str, int] = {}
    for name, finer_than, resolution_s, keep_s in (("raw_to_minute", 60, 60, policy.raw_keep_s),
                                                    ("minute_to_hour", 3600, 3600, policy.minute_keep_s)):
        cutoff = _window(now - timedelta(seconds=keep_s), resolution_s)
        with session_factory() as session:
            done[f"model_{name}"] = _roll(session, ModelPointRow, _model_key, _merge_model, _copy_model,
                                          finer_than, resolution_s, cutoff)
            done[f"system_{name}"] = _roll(session, SystemPointRow, _system_key, _merge_system, _copy_system,
                                           finer_than, resolution_s, cutoff)
            session.commit()
    with session_factory() as session:
        hour_cutoff = now - timedelta(seconds=policy.hour_keep_s)
        done["hours_deleted"] = _count(session.execute(
            delete(ModelPointRow).where(ModelPointRow.start_at < hour_cutoff)))
        session.execute(delete(SystemPointRow).where(SystemPointRow.start_at < hour_cutoff))
        batch_cutoff = now - timedelta(seconds=policy.batch_keep_s)
        old = TelemetryBatchRow.received_at < batch_cutoff
        # A run's last counters are in its highest sequence number (the agent numbers batches as it
        # builds them), not in the row stored last: an outbox that drained late stores older counters.
        t = TelemetryBatchRow
        run_ends = (select(t.device_id, t.stream, func.max(t.seq))
                    .where(old, t.capture.is_not(None))
                    .group_by(t.device_id, t.stream, t.capture["since_s"].as_float()))
        done["batches_deleted"] = _count(session.execute(delete(t).where(
            old, tuple_(t.device_id, t.stream, t.seq).not_in(run_ends))))
        session.commit()
    return done


def _count(result: Any) -> int:
    return int(getattr(result, "rowcount", 0) or 0)
