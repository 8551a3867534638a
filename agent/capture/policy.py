"""Which inference rows to keep for retraining: the assignment's `CapturePolicy`, applied purely.

A row is a candidate for one reason, checked in this order (the first that applies names it):

1. `disagreement`: during probation the previous model's top-1 differs (if `capture_disagreement`);
2. `low_confidence`: top-1 confidence below `low_confidence_threshold`;
3. `random`: a uniform draw below `random_rate`.

A candidate is kept only within both budgets: at most `max_samples_per_hour` in any sliding hour and
`max_bytes_per_day` in any sliding day. `enabled = False` is the off switch: nothing is kept, whatever
the other fields say. A policy with zero budgets keeps nothing either — the controller must grant a
budget explicitly, so a device never ships user data by default.

Pure: the caller passes the time and the random draw, so tests replay any sequence exactly.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable
from dataclasses import dataclass

from manifests.assignment import CapturePolicy

HOUR_S = 3600.0
DAY_S = 86400.0


@dataclass(frozen=True)
class Decision:
    keep: bool
    reason: str | None  # "disagreement" | "low_confidence" | "random" when kept or over budget
    refused: str | None = None  # "disabled" | "not_selected" | "hourly_budget" | "daily_budget"


class CaptureBudget:
    """Sliding-window counters of what was kept (seeded from the spool after a restart)."""

    def __init__(self, kept: Iterable[tuple[float, int]] = ()) -> None:
        self._hour: collections.deque[float] = collections.deque()
        self._day: collections.deque[tuple[float, int]] = collections.deque()
        self._day_bytes = 0
        for at_s, size in sorted(kept):
            self.record(at_s, size)

    def _expire(self, now_s: float) -> None:
        while self._hour and self._hour[0] <= now_s - HOUR_S:
            self._hour.popleft()
        while self._day and self._day[0][0] <= now_s - DAY_S:
            self._day_bytes -= self._day.popleft()[1]

    def record(self, at_s: float, size_bytes: int) -> None:
        self._expire(at_s)
        self._hour.append(at_s)
        self._day.append((at_s, size_bytes))
        self._day_bytes += size_bytes

    def allows(self, policy: CapturePolicy, now_s: float, size_bytes: int) -> str | None:
        """None if one more sample of `size_bytes` fits, else which budget refuses it."""
        self._expire(now_s)
        if len(self._hour) >= policy.max_samples_per_hour:
            return "hourly_budget"
        if self._day_bytes + size_bytes > policy.max_bytes_per_day:
            return "daily_budget"
        return None


def candidate_reason(policy: CapturePolicy, confidence: float | None, disagreed: bool, draw: float) -> str | None:
    if policy.capture_disagreement and disagreed:
        return "disagreement"
    threshold = policy.low_confidence_threshold
    if threshold is not None and confidence is not None and confidence < threshold:
        return "low_confidence"
    if draw < policy.random_rate:
        return "random"
    return None


def decide(policy: CapturePolicy, budget: CaptureBudget, *, now_s: float, size_bytes: int,
           confidence: float | None, disagreed: bool, draw: float) -> Decision:
    """Whether to keep one row; records it in `budget` when kept."""
    if not policy.enabled:
        return Decision(False, None, "disabled")
    reason = candidate_reason(policy, confidence, disagreed, draw)
    if reason is None:
        return Decision(False, None, "not_selected")
    refused = budget.allows(policy, now_s, size_bytes)
    if refused is not None:
        return Decision(False, reason, refused)
    budget.record(now_s, size_bytes)
    return Decision(True, reason)
