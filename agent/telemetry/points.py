"""Pure arithmetic on telemetry points: deltas of model counters, and rolling points up.

Rolling up merges the points of each aligned window (`floor(start_s / resolution_s)`) into one:

- model metrics: requests and errors add up, latency histograms merge bucket by bucket (exact);
- system metrics: CPU, memory and disk are averaged weighted by the raw samples each point holds;
  temperatures keep the maximum per zone (a thermal peak is what an operator looks for).

So a rolled-up point loses time resolution but no request, no error and no latency sample.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from agent.metrics.histogram import LatencyHistogram
from agent.telemetry.wire import ModelSample, Point, SystemSample


def merge_models(groups: Iterable[Iterable[ModelSample]]) -> tuple[ModelSample, ...]:
    merged: dict[tuple[str, str, str], tuple[int, int, LatencyHistogram]] = {}
    for models in groups:
        for m in models:
            key = (m.model, m.version, m.variant)
            requests, errors, hist = merged.get(key, (0, 0, LatencyHistogram()))
            hist = hist.copy()
            hist.merge(m.latency)
            merged[key] = (requests + m.requests, errors + m.errors, hist)
    return tuple(ModelSample(k[0], k[1], k[2], r, e, h) for k, (r, e, h) in sorted(merged.items()))


def _weighted(values: Sequence[tuple[float | None, int]]) -> float | None:
    known = [(v, w) for v, w in values if v is not None]
    total = sum(w for _, w in known)
    if not known or total == 0:
        return None
    return round(sum(v * w for v, w in known) / total, 2)


def merge_points(points: Sequence[Point], resolution_s: int) -> Point:
    """One point covering all of `points` (which should share a window of `resolution_s`)."""
    if not points:
        raise ValueError("cannot merge an empty list of points")
    weights = [max(1, p.samples) for p in points]
    temps: dict[str, float] = {}
    for p in points:
        for zone, value in p.system.temps_c.items():
            temps[zone] = max(value, temps.get(zone, value))
    system = SystemSample(
        cpu_pct=_weighted([(p.system.cpu_pct, w) for p, w in zip(points, weights, strict=True)]),
        mem_used_mb=_weighted([(p.system.mem_used_mb, w) for p, w in zip(points, weights, strict=True)]),
        mem_total_mb=max((p.system.mem_total_mb or 0.0 for p in points), default=0.0) or None,
        disk_used_pct=_weighted([(p.system.disk_used_pct, w) for p, w in zip(points, weights, strict=True)]),
        temps_c=temps,
    )
    return Point(
        start_s=min(p.start_s for p in points),
        end_s=max(p.end_s for p in points),
        resolution_s=resolution_s,
        system=system,
        models=merge_models(p.models for p in points),
        samples=sum(weights),
    )


def roll_up(points: Sequence[Point], resolution_s: int) -> list[Point]:
    """Merge points finer than `resolution_s` by aligned window; coarser points pass through."""
    out: list[Point] = []
    windows: dict[int, list[Point]] = {}
    order: list[int] = []
    for p in points:
        if p.resolution_s >= resolution_s:
            out.append(p)
            continue
        window = int(p.start_s // resolution_s)
        if window not in windows:
            windows[window] = []
            order.append(window)
        windows[window].append(p)
    out.extend(merge_points(windows[w], resolution_s) for w in order)
    out.sort(key=lambda p: p.start_s)
    return out


def histogram_delta(now: LatencyHistogram, before: LatencyHistogram | None) -> LatencyHistogram:
    """Samples recorded since `before`; the whole histogram if there is no earlier snapshot or if the
    counters went backwards (the version was reloaded and its histogram started over)."""
    if before is None or now.count < before.count:
        return now.copy()
    try:
        return now.minus(before)
    except ValueError:
        return now.copy()
