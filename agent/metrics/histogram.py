"""Latency histograms with fixed log-spaced buckets, so histograms from anywhere merge exactly.

Every histogram in the fleet uses the same bucket edges (20 per decade from 1 µs to 1000 s), so
adding two histograms' counts bucket by bucket is the histogram of the combined samples: the
controller can merge devices and time windows and read fleet percentiles that are exact to one
bucket (12 % wide). Percentiles read from a histogram are therefore estimates within that
resolution; that is the price of O(1) memory and exact merging.

Wire form (`to_wire` / `from_wire`): `{"schema": 1, "unit": "s", "buckets_per_decade": 20,
"min_s": 1e-06, "counts": {"<bucket index>": count, ...}, "count": n, "sum_s": total}` with only
non-zero buckets listed. Index 0 is the underflow bucket (< min_s), the last index the overflow.

Deliberately not thread-safe: each histogram is owned by one thread (the server records on its
event loop) and snapshots are copied out.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping
from typing import Any

SCHEMA = 1
BUCKETS_PER_DECADE = 20
MIN_S = 1e-6
DECADES = 9  # 1 µs .. 1000 s
MAX_WIRE_BUCKETS = BUCKETS_PER_DECADE * DECADES + 2

# EDGES_S[i] is the upper edge of bucket i; bucket 0 holds (0, MIN_S), the last bucket everything
# above the last edge. Computed from integers so every process gets bit-identical edges.
EDGES_S: tuple[float, ...] = tuple(
    MIN_S * 10 ** (i / BUCKETS_PER_DECADE) for i in range(BUCKETS_PER_DECADE * DECADES + 1)
)
N_BUCKETS = len(EDGES_S) + 1


class HistogramError(ValueError):
    """A histogram on the wire does not match this layout or is malformed (retry: no)."""


class LatencyHistogram:
    """Counts of latencies (seconds) in fixed log buckets, plus exact count, sum and max."""

    __slots__ = ("counts", "count", "sum_s", "max_s")

    def __init__(self) -> None:
        self.counts = [0] * N_BUCKETS
        self.count = 0
        self.sum_s = 0.0
        self.max_s = 0.0

    @staticmethod
    def bucket_of(value_s: float) -> int:
        return bisect.bisect_left(EDGES_S, value_s)

    def record(self, value_s: float) -> None:
        if not value_s >= 0.0:  # also rejects NaN
            raise ValueError(f"latency must be a non-negative number of seconds, got {value_s!r}")
        self.counts[bisect.bisect_left(EDGES_S, value_s)] += 1
        self.count += 1
        self.sum_s += value_s
        if value_s > self.max_s:
            self.max_s = value_s

    def merge(self, other: LatencyHistogram) -> None:
        for i, c in enumerate(other.counts):
            if c:
                self.counts[i] += c
        self.count += other.count
        self.sum_s += other.sum_s
        self.max_s = max(self.max_s, other.max_s)

    def copy(self) -> LatencyHistogram:
        h = LatencyHistogram()
        h.merge(self)
        return h

    def minus(self, earlier: LatencyHistogram) -> LatencyHistogram:
        """The samples recorded since `earlier` (a copy of this histogram taken before)."""
        h = LatencyHistogram()
        h.counts = [a - b for a, b in zip(self.counts, earlier.counts, strict=True)]
        if any(c < 0 for c in h.counts):
            raise HistogramError("`earlier` is not a previous state of this histogram")
        h.count = self.count - earlier.count
        h.sum_s = self.sum_s - earlier.sum_s
        h.max_s = self.max_s  # the max since `earlier` is unknowable; the overall max bounds it
        return h

    @property
    def mean_s(self) -> float:
        return self.sum_s / self.count if self.count else math.nan

    def quantile(self, q: float) -> float:
        """Estimated q-quantile in seconds (NaN when empty), interpolated log-linearly in its bucket."""
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"quantile must be within [0, 1], got {q}")
        if self.count == 0:
            return math.nan
        rank = q * self.count
        seen = 0
        for i, c in enumerate(self.counts):
            if c == 0 or seen + c < rank:
                seen += c
                continue
            lower = EDGES_S[i - 1] if i > 0 else 0.0
            upper = EDGES_S[i] if i < len(EDGES_S) else self.max_s
            upper = min(upper, self.max_s) if self.max_s > 0 else upper
            fraction = (rank - seen) / c
            if lower <= 0.0 or upper <= lower:
                return max(lower, min(upper, lower + (upper - lower) * fraction))
            return float(lower * (upper / lower) ** fraction)
        return self.max_s

    def to_wire(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "unit": "s",
            "buckets_per_decade": BUCKETS_PER_DECADE,
            "min_s": MIN_S,
            "counts": {str(i): c for i, c in enumerate(self.counts) if c},
            "count": self.count,
            "sum_s": self.sum_s,
            "max_s": self.max_s,
        }

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> LatencyHistogram:
        """Parse a wire histogram, refusing one made with other buckets (it would merge wrongly)."""
        if not isinstance(data, Mapping):
            raise HistogramError(f"histogram must be an object, got {type(data).__name__}")
        if data.get("schema") != SCHEMA:
            raise HistogramError(f"histogram schema: expected {SCHEMA}, got {data.get('schema')!r}")
        if data.get("buckets_per_decade") != BUCKETS_PER_DECADE or data.get("min_s") != MIN_S:
            raise HistogramError(
                f"histogram layout: expected {BUCKETS_PER_DECADE}/decade from {MIN_S}, got "
                f"{data.get('buckets_per_decade')!r}/decade from {data.get('min_s')!r}"
            )
        counts = data.get("counts")
        if not isinstance(counts, Mapping) or len(counts) > MAX_WIRE_BUCKETS:
            raise HistogramError("histogram counts must be an object with at most one entry per bucket")
        h = cls()
        for key, value in counts.items():
            if not (isinstance(key, str) and key.isascii() and key.isdigit() and 0 <= int(key) < N_BUCKETS):
                raise HistogramError(f"histogram bucket index out of range: {key!r}")
            if not (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
                raise HistogramError(f"histogram count for bucket {key} must be a non-negative int")
            h.counts[int(key)] = value
        total = data.get("count")
        if total != sum(h.counts):
            raise HistogramError(f"histogram count {total!r} does not match its buckets' sum {sum(h.counts)}")
        h.count = total
        for name in ("sum_s", "max_s"):
            value = data.get(name, 0.0)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise HistogramError(f"histogram {name} must be a non-negative number, got {value!r}")
            try:
                setattr(h, name, float(value))
            except OverflowError as e:
                raise HistogramError(f"histogram {name} must be a non-negative number, got {value!r:.40}") from e
        return h

    @classmethod
    def from_wire_fast(cls, data: object) -> LatencyHistogram | None:
        """`from_wire` for the common case, a histogram exactly as `to_wire` writes it after a JSON
        round trip (canonical bucket keys, plain ints and floats), or None for anything else, which
        `from_wire` then refuses with its reason (or accepts, for a lenient form such as "007").
        Bulk checks in C (map, min, sum) instead of per-bucket Python: telemetry ingest decodes one
        histogram per model per point."""
        if type(data) is not dict:
            return None
        get = data.get
        counts = get("counts")
        if (get("schema") != SCHEMA or get("buckets_per_decade") != BUCKETS_PER_DECADE or get("min_s") != MIN_S
                or type(counts) is not dict or len(counts) > MAX_WIRE_BUCKETS):
            return None
        indices: list[Any] = list(map(_WIRE_INDEX.get, counts))
        values = list(counts.values())
        if None in indices or not set(map(type, values)) <= _ONLY_INT or (values and min(values) < 0):
            return None
        total = get("count")
        sum_s = get("sum_s", 0.0)
        max_s = get("max_s", 0.0)
        if (total != sum(values) or type(sum_s) is not float or type(max_s) is not float
                or not sum_s >= 0 or not max_s >= 0):
            return None
        h = cls()
        list(map(h.counts.__setitem__, indices, values))
        h.count = total
        h.sum_s = sum_s
        h.max_s = max_s
        return h


_WIRE_INDEX: dict[str, int] = {str(i): i for i in range(N_BUCKETS)}
_ONLY_INT = frozenset({int})
