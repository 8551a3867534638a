"""Probation: watch a freshly activated version on live traffic and decide commit or rollback.

    judge(policy, figures, limits, window_over) -> Verdict      pure: same figures, same verdict
    ServerProbation.watch(model, policy) -> ProbationResult      the engine's Probation port

What is judged (ProbationPolicy from the signed assignment):

| check        | figure                                              | fails when                           |
|--------------|-----------------------------------------------------|--------------------------------------|
| errors       | 5xx-type failures / requests of the new version     | > max_error_rate (≥ min_requests)    |
| NaN / Inf    | rows with a non-finite output / rows                | > max_nan_rate (rate 0: at once)     |
| latency      | new p95 and p99 / the previous version's live p95,  | > max_latency_p99_ratio and more     |
|              | p99 on this server (same traffic, same HTTP path)   | than `latency_floor_s` slower        |
| agreement    | top-1 agreement with the previous version, by       | < min_agreement (≥ min_shadow_rows)  |
|              | shadow evaluation of sampled live inputs            |                                      |
| confidence   | previous minus new mean top-1 confidence on the     | > max_confidence_drop                |
|              | same shadowed rows (a model gone unsure: drift, a   | (≥ min_shadow_rows with a confidence)|
|              | bad quantization), even where top-1 still agrees    |                                      |

A violation ends probation at once (the engine then rolls back); the window running out without
one passes, and the previous version is released. The evidence (every figure and limit) goes into
the result's detail, which the engine publishes with its event.

The latency baseline is the previous version's live latency on this server, not the gate's bare
runtime figures: live figures include HTTP and queueing, so only live-to-live is a fair ratio.
With no live baseline (a first model, an idle device) latency is reported but not judged.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from agent.metrics.histogram import LatencyHistogram
from agent.server.activator import LoopBridge, ServingActivator
from agent.server.model_server import ModelServer
from agent.server.shadow import ComparedObserver, ShadowEvaluator, ShadowFigures
from agent.server.versions import LoadedVersion
from agent.state.ports import ActiveModel, ProbationResult
from manifests.assignment import ProbationPolicy


@dataclass(frozen=True)
class ProbationLimits:
    """Evidence needed before a rate is judged; keeps one unlucky request from deciding."""

    min_requests: int = 20
    min_baseline_requests: int = 20
    min_shadow_rows: int = 20
    latency_floor_s: float = 0.002


@dataclass(frozen=True)
class LiveFigures:
    elapsed_s: float
    requests: int
    errors: int
    rows: int
    nonfinite_rows: int
    latency_p95_s: float | None
    latency_p99_s: float | None
    baseline_requests: int
    baseline_p95_s: float | None
    baseline_p99_s: float | None
    shadow: ShadowFigures


@dataclass(frozen=True)
class Verdict:
    decision: str  # "pass" | "fail" | "continue"
    reasons: tuple[str, ...]
    evidence: dict[str, Any]


def _q(h: LatencyHistogram, q: float) -> float | None:
    value = h.quantile(q)
    return None if math.isnan(value) else value


def judge(policy: ProbationPolicy, figures: LiveFigures, limits: ProbationLimits, window_over: bool) -> Verdict:
    reasons: list[str] = []
    f = figures
    if f.requests >= limits.min_requests and f.errors / f.requests > policy.max_error_rate:
        reasons.append(f"error_rate {f.errors}/{f.requests} = {f.errors / f.requests:.4f} "
                       f"> max {policy.max_error_rate}")
    if f.rows and f.nonfinite_rows and (policy.max_nan_rate == 0 or f.rows >= limits.min_requests):
        rate = f.nonfinite_rows / f.rows
        if rate > policy.max_nan_rate:
            reasons.append(f"nan_rate {f.nonfinite_rows}/{f.rows} = {rate:.4f} > max {policy.max_nan_rate}")
    if f.requests >= limits.min_requests and f.baseline_requests >= limits.min_baseline_requests:
        for label, new, old in (("p95", f.latency_p95_s, f.baseline_p95_s), ("p99", f.latency_p99_s, f.baseline_p99_s)):
            if new is None or old is None or old <= 0:
                continue
            if new / old > policy.max_latency_p99_ratio and new - old > limits.latency_floor_s:
                reasons.append(f"latency_{label} {new * 1e3:.2f} ms = {new / old:.2f}x the previous "
                               f"{old * 1e3:.2f} ms > max {policy.max_latency_p99_ratio}x")
    agreement = f.shadow.agreement
    if (policy.min_agreement is not None and agreement is not None
            and f.shadow.rows >= limits.min_shadow_rows and agreement < policy.min_agreement):
        reasons.append(f"agreement {agreement:.4f} over {f.shadow.rows} shadowed rows "
                       f"< min {policy.min_agreement}")
    drop = f.shadow.confidence_drop
    if (policy.max_confidence_drop is not None and drop is not None
            and f.shadow.confidence_rows >= limits.min_shadow_rows and drop > policy.max_confidence_drop):
        reasons.append(f"confidence_drop {drop:.4f}: mean top-1 confidence {f.shadow.mean_confidence_new:.4f} "
                       f"(new) vs {f.shadow.mean_confidence_previous:.4f} (previous) over "
                       f"{f.shadow.confidence_rows} shadowed rows > max {policy.max_confidence_drop}")
    evidence = {
        "figures": {**{k: v for k, v in asdict(f).items() if k != "shadow"}, "shadow": f.shadow.to_dict()},
        "policy": asdict(policy),
        "limits": asdict(limits),
    }
    if reasons:
        return Verdict("fail", tuple(reasons), evidence)
    return Verdict("pass" if window_over else "continue", (), evidence)


class ServerProbation:
    """The engine's Probation port: blocks for the window, polling the server's live figures."""

    def __init__(self, bridge: LoopBridge, activator: ServingActivator, *, limits: ProbationLimits | None = None,
                 poll_interval_s: float = 1.0, shadow_sample_rate: float = 0.2,
                 monotonic: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep, on_shadow_compared: ComparedObserver | None = None) -> None:
        self.bridge = bridge
        self.on_shadow_compared = on_shadow_compared  # e.g. sample capture of disagreeing rows
        self.activator = activator
        self.models: ModelServer = activator.models
        self.limits = limits or ProbationLimits()
        self.poll_interval_s = poll_interval_s
        self.shadow_sample_rate = shadow_sample_rate
        self.monotonic = monotonic
        self.sleep = sleep

    def watch(self, model: ActiveModel, policy: ProbationPolicy) -> ProbationResult:
        new, previous = self.activator.versions(model)
        if new is None:
            return ProbationResult(False, "not_serving: the activated model is not the served version")
        name = self.activator.name_for(model.ref)
        shadow = self.bridge.call(self._start_shadow(name, new, previous)) if previous is not None else None
        baseline = previous.stats.latency.copy() if previous is not None else LatencyHistogram()
        started = self.monotonic()
        try:
            while True:
                window_over = self.monotonic() - started >= policy.window_s
                verdict = judge(policy, self._figures(new, baseline, shadow, started), self.limits, window_over)
                if verdict.decision == "fail":
                    return ProbationResult(False, "; ".join(verdict.reasons), verdict.evidence)
                if verdict.decision == "pass":
                    break
                if self.activator.versions(model)[0] is not new:
                    return ProbationResult(False, "replaced: another version was swapped in during probation")
                remaining = policy.window_s - (self.monotonic() - started)
                self.sleep(max(0.0, min(self.poll_interval_s, remaining)))
        finally:
            if shadow is not None:
                self.bridge.call(self._stop_shadow(name, shadow))
        self.activator.commit(model)
        return ProbationResult(True, None, verdict.evidence)

    def _figures(self, new: LoadedVersion, baseline: LatencyHistogram, shadow: ShadowEvaluator | None,
                 started: float) -> LiveFigures:
        stats = new.stats  # counters are ints updated on the loop; a slightly stale read is harmless
        latency = stats.latency.copy()
        return LiveFigures(
            elapsed_s=self.monotonic() - started, requests=stats.requests, errors=stats.errors,
            rows=stats.rows, nonfinite_rows=stats.nonfinite_rows,
            latency_p95_s=_q(latency, 0.95), latency_p99_s=_q(latency, 0.99),
            baseline_requests=baseline.count, baseline_p95_s=_q(baseline, 0.95),
            baseline_p99_s=_q(baseline, 0.99),
            shadow=shadow.figures() if shadow is not None else ShadowFigures(),
        )

    async def _start_shadow(self, name: str, new: LoadedVersion, previous: LoadedVersion) -> ShadowEvaluator:
        shadow = ShadowEvaluator(new, previous, self.shadow_sample_rate, on_compared=self.on_shadow_compared)
        shadow.start()
        self.models.add_observer(name, shadow.observe)
        return shadow

    async def _stop_shadow(self, name: str, shadow: ShadowEvaluator) -> None:
        if name in self.models.models:
            self.models.remove_observer(name, shadow.observe)
        await shadow.stop()
