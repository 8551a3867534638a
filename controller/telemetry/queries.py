"""Latency and error queries over stored telemetry; percentiles come from merged histograms only.

Every figure is computed by adding the bucket counts of all matching rows into one
`LatencyHistogram` and reading its quantiles: fleet p99 is the p99 of all requests of the fleet (exact
to one bucket, ≈12 %), never an average of per-device p99s, which has no meaning. Rows of every
resolution are read together: the retention job replaces finer rows by coarser ones in one
transaction, so each request is counted in exactly one row.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from agent.metrics.histogram import N_BUCKETS, LatencyHistogram
from controller.telemetry.tables import ModelPointRow

GROUPS = ("version", "variant", "hardware_class", "device_id")
QUANTILES = (0.5, 0.95, 0.99)


@dataclass
class Aggregate:
    requests: int = 0
    errors: int = 0
    latency: LatencyHistogram | None = None

    def add(self, row: ModelPointRow) -> None:
        self.requests += row.requests
        self.errors += row.errors
        if self.latency is None:
            self.latency = LatencyHistogram()
        add_row_histogram(self.latency, row)

    def to_dict(self) -> dict[str, Any]:
        h = self.latency or LatencyHistogram()
        out: dict[str, Any] = {"requests": self.requests, "errors": self.errors,
                               "error_rate": self.errors / self.requests if self.requests else None,
                               "latency_count": h.count,
                               "mean_ms": _ms(h.mean_s), "max_ms": _ms(h.max_s) if h.count else None}
        for q in QUANTILES:
            out[f"p{round(q * 100)}_ms"] = _ms(h.quantile(q))
        return out


def _ms(value_s: float) -> float | None:
    return None if math.isnan(value_s) else round(value_s * 1000.0, 4)


def add_row_histogram(h: LatencyHistogram, row: ModelPointRow) -> None:
    for key, count in row.buckets.items():
        index = int(key)
        if 0 <= index < N_BUCKETS:
            h.counts[index] += int(count)
    h.count += row.latency_count
    h.sum_s += row.latency_sum_s
    h.max_s = max(h.max_s, row.latency_max_s)


def _filtered(
    since: datetime, until: datetime, *, model: str | None = None, device_id: str | None = None,
    version: str | None = None, variant: str | None = None, hardware_class: str | None = None,
) -> Select[Any]:
    query = select(ModelPointRow).where(ModelPointRow.start_at >= since, ModelPointRow.start_at < until)
    for column, value in ((ModelPointRow.model, model), (ModelPointRow.device_id, device_id),
                          (ModelPointRow.version, version), (ModelPointRow.variant, variant),
                          (ModelPointRow.hardware_class, hardware_class)):
        if value is not None:
            query = query.where(column == value)
    return query


def rows(session: Session, since: datetime, until: datetime, **filters: str | None) -> Iterable[ModelPointRow]:
    return session.scalars(_filtered(since, until, **filters).execution_options(yield_per=2000))


def grouped(session: Session, since: datetime, until: datetime, group_by: str | None,
            **filters: str | None) -> dict[str, dict[str, Any]]:
    """Figures per value of `group_by` (or one group `all`), each from its merged histogram."""
    if group_by is not None and group_by not in GROUPS:
        raise ValueError(f"group_by must be one of {GROUPS}, got {group_by!r}")
    groups: dict[str, Aggregate] = {}
    for row in rows(session, since, until, **filters):
        key = "all" if group_by is None else str(getattr(row, group_by))
        groups.setdefault(key, Aggregate()).add(row)
    return {k: v.to_dict() for k, v in sorted(groups.items())}


def series(session: Session, since: datetime, until: datetime, step_s: int,
           **filters: str | None) -> list[dict[str, Any]]:
    """Figures per time step (rows are placed by their start)."""
    steps: dict[int, Aggregate] = {}
    for row in rows(session, since, until, **filters):
        index = int((row.start_at - since).total_seconds() // step_s)
        steps.setdefault(index, Aggregate()).add(row)
    return [{"start": (since + timedelta(seconds=i * step_s)).isoformat(), **steps[i].to_dict()}
            for i in sorted(steps)]


def compare(session: Session, since: datetime, until: datetime, model: str, baseline: str,
            candidate: str, hardware_class: str | None = None) -> dict[str, Any]:
    """Version vs version across the fleet, per hardware class too; ratios are candidate / baseline."""
    out: dict[str, Any] = {"model": model, "baseline": baseline, "candidate": candidate}
    figures = {}
    for name, version in (("baseline", baseline), ("candidate", candidate)):
        figures[name] = grouped(session, since, until, None, model=model, version=version,
                                hardware_class=hardware_class).get("all", Aggregate().to_dict())
        out[name] = figures[name]
    ratios: dict[str, float | None] = {}
    for key in ("p50_ms", "p95_ms", "p99_ms", "error_rate"):
        a, b = figures["baseline"].get(key), figures["candidate"].get(key)
        ratios[key] = round(b / a, 4) if a and b is not None else None
    out["ratio"] = ratios
    by_class: dict[str, dict[str, Any]] = {}
    for name, version in (("baseline", baseline), ("candidate", candidate)):
        for cls, figs in grouped(session, since, until, "hardware_class", model=model, version=version,
                                 hardware_class=hardware_class).items():
            by_class.setdefault(cls, {})[name] = figs
    out["by_hardware_class"] = by_class
    return out
