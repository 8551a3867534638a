"""The `capture` object of a telemetry batch: sample-capture counters, shared by agent and controller.

Counters are cumulative since `since_s` (when the daemon that counts them started; a later
`since_s` means they started over, as a Prometheus counter reset does). `pending` and
`pending_bytes` are gauges: what waits in the spool when the batch is built.

    captured_<reason>           rows kept and written to the spool, by reason (random, low_confidence,
                                disagreement)
    dropped_hourly_budget/      candidate rows the policy's budgets refused
    dropped_daily_budget
    dropped_spool_full          samples the spool's byte bound deleted (oldest first) or refused
    dropped_backlog             kept rows the writer thread could not take (its queue was full)
    write_errors                kept rows the spool could not write
    discarded_by_policy         samples deleted unsent because capture was switched off
    uploaded                    samples the controller confirmed
    upload_failures             sample PUTs that failed (the sample stays spooled)
    upload_rounds_failed        upload rounds that confirmed nothing (controller or store unreachable)
    spooled_bytes               bytes written to the spool

The field is optional: a device that never counted a sample sends no `capture` object, so its
batches stay valid for controllers that predate it. Decoding is as strict as the rest of the batch:
exactly these keys, non-negative integers, a finite `since_s`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

CAPTURE_REASONS = ("random", "low_confidence", "disagreement")
_MAX_COUNT = 2**53


class CaptureCountsError(ValueError):
    """The `capture` object is malformed; the message names the field (retry: no)."""


@dataclass(frozen=True)
class CaptureCounts:
    since_s: float = 0.0
    captured_random: int = 0
    captured_low_confidence: int = 0
    captured_disagreement: int = 0
    dropped_hourly_budget: int = 0
    dropped_daily_budget: int = 0
    dropped_spool_full: int = 0
    dropped_backlog: int = 0
    write_errors: int = 0
    discarded_by_policy: int = 0
    uploaded: int = 0
    upload_failures: int = 0
    upload_rounds_failed: int = 0
    spooled_bytes: int = 0
    pending: int = 0
    pending_bytes: int = 0

    @property
    def captured(self) -> int:
        return self.captured_random + self.captured_low_confidence + self.captured_disagreement

    def counters(self) -> dict[str, int]:
        """Every count, without `since_s`."""
        fields = asdict(self)
        fields.pop("since_s")
        return fields

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_COUNT_KEYS = tuple(k for k in CaptureCounts.__dataclass_fields__ if k != "since_s")
CAPTURE_KEYS = frozenset(CaptureCounts.__dataclass_fields__)


def counts_from_dict(raw: Any, where: str = "batch.capture") -> CaptureCounts:
    """The reference decoder: refuses with the first bad field's name."""
    if not isinstance(raw, dict):
        raise CaptureCountsError(f"{where} must be an object, got {type(raw).__name__}")
    if set(raw) != CAPTURE_KEYS:
        missing, extra = sorted(CAPTURE_KEYS - set(raw)), sorted(set(raw) - CAPTURE_KEYS)
        raise CaptureCountsError(f"{where}: missing fields {missing[:8]}, unexpected fields {extra[:8]}")
    since_s = raw["since_s"]
    if isinstance(since_s, bool) or not isinstance(since_s, (int, float)) or not _finite(since_s) or since_s < 0:
        raise CaptureCountsError(f"{where}.since_s must be a finite non-negative number, got {since_s!r:.40}")
    counts: dict[str, int] = {}
    for key in _COUNT_KEYS:
        value = raw[key]
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < _MAX_COUNT:
            raise CaptureCountsError(f"{where}.{key} must be a non-negative integer, got {value!r:.40}")
        counts[key] = value
    return CaptureCounts(since_s=float(since_s), **counts)


def fast_counts(raw: Any) -> CaptureCounts | None:
    """The counts if `raw` is well formed in plain JSON types; None to take `counts_from_dict`."""
    if type(raw) is not dict or raw.keys() != CAPTURE_KEYS:
        return None
    since_s = raw["since_s"]
    if type(since_s) is int:
        if not 0 <= since_s < 2**1023:
            return None
    elif type(since_s) is not float or not 0.0 <= since_s < math.inf:
        return None
    for key in _COUNT_KEYS:
        value = raw[key]
        if type(value) is not int or not 0 <= value < _MAX_COUNT:
            return None
    return CaptureCounts(since_s=float(since_s), **{k: raw[k] for k in _COUNT_KEYS})


def _finite(value: float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:
        return False
