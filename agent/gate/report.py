"""The gate's report and its verdict: all figures measured in the child, and a pure pass/fail.

`judge(report, policy, settings)` is a pure function: the same report and policy always give the
same verdict, so a published report can be re-judged by anyone. Figures that could not be measured
are `None`; a check whose figure is missing fails only if the figure was required (a candidate that
did not load has no latency, and fails on `load_failed`, not on latency).

Latency noise: on shared CPUs p50 varies up to 1.7x between runs. The gate measures candidate and
current model interleaved (A, B, B, A, ...) on the same inputs in the same process, judges the
regression on the median of the per-round time ratios, and ignores differences below an absolute noise floor, so
default policies do not flap on noise while a 10x slower model still fails.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from manifests.assignment import GatePolicy


@dataclass(frozen=True)
class ModelFigures:
    """What the child measured for one model (the candidate or the current one)."""

    loaded: bool = False
    load_error: str | None = None
    load_s: float | None = None
    samples: int = 0
    nonfinite_values: int = 0
    accuracy: float | None = None  # top-1 against the golden labels
    agreement: float | None = None  # top-1 agreement with the golden reference outputs
    latency_p50_ms: float | None = None
    latency_p95_ms: float | None = None
    latency_p99_ms: float | None = None
    peak_rss_mb: float | None = None  # peak RSS the model added over the interpreter + runtime baseline
    process_peak_rss_mb: float | None = None  # the measuring process's whole peak, for context


@dataclass(frozen=True)
class GateReport:
    candidate: str
    runtime: str
    precision: str
    hardware_class: str
    measured: ModelFigures
    current: ModelFigures | None = None
    agreement_with_current: float | None = None
    latency_rounds: int = 0
    # median over rounds of (candidate time / current time) in the same round: load that comes and goes
    # hits both halves of a pair, so this is far steadier than a ratio of separately taken p50s
    paired_latency_ratio: float | None = None
    duration_s: float = 0.0
    error: str | None = None  # "crashed: ..." / "timeout: ..." when the child did not report

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> GateReport:
        current = doc.get("current")
        return cls(
            candidate=str(doc["candidate"]),
            runtime=str(doc["runtime"]),
            precision=str(doc["precision"]),
            hardware_class=str(doc["hardware_class"]),
            measured=ModelFigures(**doc["measured"]),
            current=ModelFigures(**current) if current is not None else None,
            agreement_with_current=doc.get("agreement_with_current"),
            latency_rounds=int(doc.get("latency_rounds", 0)),
            paired_latency_ratio=doc.get("paired_latency_ratio"),
            duration_s=float(doc.get("duration_s", 0.0)),
            error=doc.get("error"),
        )


@dataclass(frozen=True)
class GateSettings:
    """Device-side gate settings: how to measure. What passes is the signed policy's alone (budgets,
    accuracy floor, the allowed drop against the current model), so the director can waive the drop
    for a fleet rollback without every device needing a local exception."""

    timeout_s: float = 300.0
    latency_rounds: int = 300
    latency_budget_s: float = 20.0
    warmup_rounds: int = 10
    latency_noise_floor_ms: float = 0.05  # regressions smaller than this are noise, whatever the ratio


@dataclass(frozen=True)
class Verdict:
    passed: bool
    reasons: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "reasons": list(self.reasons)}


def judge(report: GateReport, policy: GatePolicy, settings: GateSettings) -> Verdict:
    reasons: list[str] = []
    m = report.measured
    if report.error is not None:
        return Verdict(False, (report.error,))
    if not m.loaded:
        return Verdict(False, (f"load_failed: {m.load_error}",))
    if m.nonfinite_values:
        reasons.append(f"outputs_not_finite: {m.nonfinite_values} NaN/Inf values on the golden set")
    if policy.min_accuracy is not None and (m.accuracy is None or m.accuracy < policy.min_accuracy):
        reasons.append(f"accuracy_below_min: {_fmt(m.accuracy)} < {policy.min_accuracy:.4f}")
    if policy.min_agreement is not None and (m.agreement is None or m.agreement < policy.min_agreement):
        reasons.append(f"agreement_below_min: {_fmt(m.agreement)} < {policy.min_agreement:.4f}")
    cur = report.current
    drop = policy.max_accuracy_drop
    if (drop is not None and cur is not None and cur.loaded and cur.accuracy is not None
            and m.accuracy is not None and m.accuracy < cur.accuracy - drop):
        reasons.append(f"accuracy_below_current: {m.accuracy:.4f} < current {cur.accuracy:.4f} - {drop}")
    if policy.max_latency_p95_ms is not None and (m.latency_p95_ms is None
                                                  or m.latency_p95_ms > policy.max_latency_p95_ms):
        reasons.append(f"latency_p95_over_budget: {_fmt(m.latency_p95_ms)} ms > {policy.max_latency_p95_ms} ms")
    ratio = regression_ratio(report)
    if (policy.max_latency_regression_ratio is not None and ratio is not None and cur is not None
            and cur.latency_p50_ms is not None and m.latency_p50_ms is not None
            and ratio > policy.max_latency_regression_ratio
            and m.latency_p50_ms - cur.latency_p50_ms > settings.latency_noise_floor_ms):
        reasons.append(f"latency_regression: {ratio:.2f}x the current model (p50 {m.latency_p50_ms:.3f} ms vs "
                       f"{cur.latency_p50_ms:.3f} ms; max {policy.max_latency_regression_ratio}x)")
    if policy.max_memory_mb is not None and (m.peak_rss_mb is None or m.peak_rss_mb > policy.max_memory_mb):
        reasons.append(f"memory_over_budget: {_fmt(m.peak_rss_mb)} MB > {policy.max_memory_mb} MB")
    return Verdict(not reasons, tuple(reasons))


def regression_ratio(report: GateReport) -> float | None:
    """Candidate vs current latency: the paired per-round ratio when measured, else the p50 ratio."""
    if report.paired_latency_ratio is not None:
        return report.paired_latency_ratio
    cur = report.current
    m = report.measured
    if cur is None or not cur.latency_p50_ms or m.latency_p50_ms is None:
        return None
    return m.latency_p50_ms / cur.latency_p50_ms


def _fmt(value: float | None) -> str:
    return "unmeasured" if value is None else f"{value:.4f}"
