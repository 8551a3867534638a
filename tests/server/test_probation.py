"""Probation: the pure verdict table, and end to end a model that passes the real gate but degrades
on live traffic is caught (NaN outputs; disagreement found by shadow evaluation) and rolled back
instantly, while a healthy one commits and releases the previous version."""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from agent.gate import GateInput, ProcessGate
from agent.server.activator import ServingActivator
from agent.server.background import BackgroundServer
from agent.server.probation import LiveFigures, ProbationLimits, ServerProbation, judge
from agent.server.shadow import ShadowFigures
from agent.state.ports import ActiveModel
from controller.sample_models import SampleModel
from manifests.assignment import GatePolicy, ProbationPolicy
from tests.server.conftest import active, binary_request, degrading_variant, parse_response, start_server
from tests.services import wait_until

LIMITS = ProbationLimits(min_requests=20, min_baseline_requests=20, min_shadow_rows=20, latency_floor_s=0.002)


def figures(**kw: object) -> LiveFigures:
    base: dict[str, object] = dict(elapsed_s=1.0, requests=100, errors=0, rows=100, nonfinite_rows=0,
                                   latency_p95_s=0.010, latency_p99_s=0.012, baseline_requests=100,
                                   baseline_p95_s=0.010, baseline_p99_s=0.012, shadow=ShadowFigures(100, 99))
    base.update(kw)
    return LiveFigures(**base)  # type: ignore[arg-type]


POLICY = ProbationPolicy(window_s=60, max_error_rate=0.01, max_latency_p99_ratio=2.0, min_agreement=0.95,
                         max_nan_rate=0.0)


@pytest.mark.parametrize(("live", "window_over", "decision", "reason"), [
    (figures(), False, "continue", None),
    (figures(), True, "pass", None),
    (figures(errors=2), False, "fail", "error_rate 2/100"),
    (figures(requests=10, errors=5, rows=10), False, "continue", None),  # too little evidence yet
    (figures(nonfinite_rows=1), False, "fail", "nan_rate 1/100"),
    (figures(requests=3, rows=3, nonfinite_rows=1), False, "fail", "nan_rate"),  # rate 0: one NaN is enough
    (figures(latency_p99_s=0.030), False, "fail", "latency_p99"),
    (figures(latency_p95_s=0.025), False, "fail", "latency_p95"),
    (figures(latency_p99_s=0.0003, baseline_p99_s=0.0001), False, "continue", None),  # under the floor
    (figures(latency_p99_s=0.030, baseline_requests=5), True, "pass", None),  # no baseline to judge by
    (figures(shadow=ShadowFigures(100, 80)), False, "fail", "agreement 0.8000"),
    (figures(shadow=ShadowFigures(10, 0)), False, "continue", None),
])
def test_judge_table(live: LiveFigures, window_over: bool, decision: str, reason: str | None) -> None:
    verdict = judge(POLICY, live, LIMITS, window_over)
    assert verdict.decision == decision, verdict.reasons
    if reason is not None:
        assert any(reason in r for r in verdict.reasons), verdict.reasons
    assert verdict.evidence["figures"]["requests"] == live.requests
    assert verdict.evidence["policy"]["min_agreement"] == 0.95


class Traffic:
    """Applications on the device: a thread posting inputs until stopped; counts non-200 answers."""

    def __init__(self, url: str, inputs: np.ndarray) -> None:
        self.url, self.inputs = url, inputs
        self.stop = threading.Event()
        self.failed = 0
        self.versions: list[str] = []
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(timeout=10) as client:
            i = 0
            while not self.stop.is_set():
                body, headers = binary_request({"input": self.inputs[i % len(self.inputs)][None, :]})
                r = client.post(self.url + "/v2/models/digits/infer", content=body, headers=headers)
                if r.status_code != 200:
                    self.failed += 1
                else:
                    self.versions.append(parse_response(r.content, r.headers)[0]["model_version"])
                i += 1

    def __enter__(self) -> Traffic:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(30)


@pytest.fixture
def device(digits_mlp: SampleModel, tmp_path: Path) -> Iterator[tuple[BackgroundServer, ServingActivator,
                                                                       ServerProbation, ActiveModel]]:
    srv = start_server(max_batch_size=16)
    activator = ServingActivator(srv.bridge, srv.models)
    probation = ServerProbation(srv.bridge, activator, limits=LIMITS, poll_interval_s=0.05,
                                shadow_sample_rate=1.0)
    current = active(shutil.copy(digits_mlp.path, tmp_path / "current.onnx"), "1")
    activator.restore(current)
    yield srv, activator, probation, current
    srv.stop()


@pytest.mark.parametrize(("mode", "reason"), [("nan", "nan_rate"), ("flip", "agreement")])
def test_a_model_that_passes_the_gate_but_degrades_live_is_rolled_back(
        device, digits_mlp: SampleModel, tmp_path: Path, mode: str, reason: str) -> None:
    srv, activator, probation, current = device
    candidate = active(degrading_variant(digits_mlp, mode, tmp_path / f"{mode}.onnx"), "2")
    gate = ProcessGate(intra_op_threads=1).evaluate(
        GateInput(candidate=candidate.ref.target, runtime="onnxruntime", precision="fp32", device="cpu",
                  model_path=candidate.path, golden_path=digits_mlp.golden_path, hardware_class="x86_64-cpu",
                  current_path=current.path, current_runtime="onnxruntime"),
        GatePolicy(min_accuracy=0.9, min_agreement=0.95, max_latency_regression_ratio=3.0))
    assert gate.verdict.passed, gate.verdict.reasons  # on the golden set it is as good as the current model

    old_version = srv.models.model("digits").current
    # warm traffic on the current model gives probation its latency baseline
    with Traffic(srv.url, digits_mlp.golden.inputs) as warm:
        wait_until(lambda: len(warm.versions) >= 30, 30, message="baseline traffic")
    activator.activate(candidate)
    # live traffic from a camera sending raw 0..16 pixel values, outside the golden set's range
    with Traffic(srv.url, digits_mlp.golden.inputs * 16.0) as live:
        result = probation.watch(candidate, ProbationPolicy(window_s=120, min_agreement=0.9, max_nan_rate=0.0))
        assert not result.passed
        assert reason in (result.reason or ""), result.reason
        shadow = result.detail["figures"]["shadow"]
        if mode == "flip":
            assert shadow["rows"] >= LIMITS.min_shadow_rows and shadow["agreement"] < 0.9
        else:
            assert result.detail["figures"]["nonfinite_rows"] >= 1
        activator.rollback(current)
        served = srv.models.model("digits")
        assert served.current is old_version and served.previous is None  # the same warm session: instant
        n = len(live.versions)
        wait_until(lambda: len(live.versions) >= n + 10, 30, message="traffic after rollback")
    assert live.failed == 0 and warm.failed == 0
    assert live.versions[-1] == "1"


def test_a_healthy_model_commits_and_releases_the_previous(device, digits_mlp: SampleModel,
                                                          tmp_path: Path) -> None:
    srv, activator, probation, current = device
    candidate = active(shutil.copy(digits_mlp.path, tmp_path / "same.onnx"), "2")
    activator.activate(candidate)
    previous = srv.models.model("digits").previous
    assert previous is not None and not previous.closed
    with Traffic(srv.url, digits_mlp.golden.inputs) as live:
        result = probation.watch(candidate, ProbationPolicy(window_s=1.5, min_agreement=0.99))
    assert result.passed, result.reason
    figures_ = result.detail["figures"]
    assert figures_["requests"] > 0 and figures_["shadow"]["agreement"] == 1.0
    assert srv.models.model("digits").previous is None and previous.closed
    assert live.failed == 0
