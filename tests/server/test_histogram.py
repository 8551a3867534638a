"""Log-bucket latency histograms: merging is exact, quantiles stay within one bucket, the wire form
round-trips and refuses foreign layouts."""

from __future__ import annotations

import numpy as np
import pytest

from agent.metrics.histogram import BUCKETS_PER_DECADE, HistogramError, LatencyHistogram


def hist(values: np.ndarray) -> LatencyHistogram:
    h = LatencyHistogram()
    for v in values:
        h.record(float(v))
    return h


def test_merging_equals_recording_everything_in_one() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.lognormal(-6, 1, 3000), rng.lognormal(-4, 0.5, 2000)
    merged = hist(a)
    merged.merge(hist(b))
    whole = hist(np.concatenate([a, b]))
    assert merged.counts == whole.counts and merged.count == 5000
    assert merged.sum_s == pytest.approx(whole.sum_s) and merged.max_s == whole.max_s


@pytest.mark.parametrize("q", [0.5, 0.9, 0.95, 0.99, 0.999])
def test_quantiles_are_within_one_bucket(q: float) -> None:
    rng = np.random.default_rng(2)
    values = rng.lognormal(-7, 1.2, 20000)
    estimate = hist(values).quantile(q)
    exact = float(np.quantile(values, q))
    width = 10 ** (1 / BUCKETS_PER_DECADE)
    assert exact / width <= estimate <= exact * width


def test_edges_extremes_and_bad_values() -> None:
    h = hist(np.array([0.0, 1e-9, 5e3]))
    assert h.counts[0] == 2 and h.counts[-1] == 1
    assert h.quantile(1.0) == 5e3
    assert np.isnan(LatencyHistogram().quantile(0.5))
    for bad in (-1.0, float("nan")):
        with pytest.raises(ValueError):
            h.record(bad)


def test_wire_round_trip_and_validation() -> None:
    h = hist(np.array([1e-4, 2e-4, 2e-4, 3e-2]))
    again = LatencyHistogram.from_wire(h.to_wire())
    assert again.counts == h.counts and again.count == 4 and again.max_s == h.max_s
    wire = h.to_wire()
    for change, fragment in [({"schema": 2}, "schema"), ({"buckets_per_decade": 10}, "layout"),
                             ({"count": 99}, "does not match"), ({"counts": {"9999": 1}}, "out of range"),
                             ({"counts": {"3": -1}, "count": -1}, "non-negative"), ({"sum_s": "x"}, "sum_s")]:
        with pytest.raises(HistogramError, match=fragment):
            LatencyHistogram.from_wire({**wire, **change})


def test_minus_gives_the_samples_since_a_snapshot() -> None:
    h = hist(np.array([1e-3, 2e-3]))
    before = h.copy()
    h.record(5e-2)
    since = h.minus(before)
    assert since.count == 1 and since.quantile(0.5) > 1e-2
    with pytest.raises(HistogramError):
        before.minus(h)
