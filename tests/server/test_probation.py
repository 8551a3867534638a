"""Probation: the pure verdict table, and end to end a model that passes the real gate but degrades
on live traffic is caught (NaN outputs; disagreement found by shadow evaluation; confidence collapsed
while top-1 still agrees) and rolled back instantly, while a healthy one commits and releases the
previous version."""

from __future__ import annotations

import dataclasses
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from agent.gate import GateInput, ProcessGate
from agent.server.activator import ServingActivator
from agent.server.background import BackgroundServer
from agent.server.probation import LiveFigures, ProbationLimits, ServerProbation, judge
from agent.server.shadow import ShadowFigures, top1_confidence
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
                         max_nan_rate=0.0, max_confidence_drop=0.1)


def confident(new: float, previous: float, rows: int = 100) -> ShadowFigures:
    return ShadowFigures(rows, rows, mean_confidence_new=new, mean_confidence_previous=previous,
                         confidence_rows=rows)


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
    (figures(shadow=confident(0.5, 0.9)), False, "fail",
     "confidence_drop 0.4000: mean top-1 confidence 0.5000 (new) vs 0.9000 (previous) over 100 shadowed rows"),
    (figures(shadow=confident(0.5, 0.9, rows=19)), False, "continue", None),  # too few shadowed rows yet
    (figures(shadow=confident(0.85, 0.9)), True, "pass", None),  # within the limit
    (figures(shadow=confident(0.99, 0.6)), True, "pass", None),  # more confident is no failure
    (figures(shadow=ShadowFigures(100, 100, confidence_rows=0)), True, "pass", None),  # no class axis
])
def test_judge_table(live: LiveFigures, window_over: bool, decision: str, reason: str | None) -> None:
    verdict = judge(POLICY, live, LIMITS, window_over)
    assert verdict.decision == decision, verdict.reasons
    if reason is not None:
        assert any(reason in r for r in verdict.reasons), verdict.reasons
    assert verdict.evidence["figures"]["requests"] == live.requests
    assert verdict.evidence["policy"]["min_agreement"] == 0.95
    assert verdict.evidence["policy"]["max_confidence_drop"] == 0.1


def test_confidence_is_not_judged_without_a_limit() -> None:
    verdict = judge(dataclasses.replace(POLICY, max_confidence_drop=None), figures(shadow=confident(0.1, 0.99)),
                    LIMITS, window_over=True)
    assert verdict.decision == "pass", verdict.reasons
    assert verdict.evidence["figures"]["shadow"]["confidence_drop"] == pytest.approx(0.89)


def test_top1_confidence_is_a_probability() -> None:
    probabilities = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]], np.float32)
    assert top1_confidence(probabilities) == pytest.approx([0.7, 0.8])
    logits = np.log(probabilities) + 3.0  # the same distributions as logits
    assert top1_confidence(logits) == pytest.approx([0.7, 0.8], rel=1e-5)
    with_nan = np.array([[0.7, 0.2, 0.1], [np.nan, 0.5, 0.5]], np.float32)
    assert top1_confidence(with_nan) == pytest.approx([0.7, 0.0])  # a NaN row has no confidence


def flattened_variant(model: SampleModel, temperature: float, out: Path) -> Path:
    """The MLP with its class probabilities re-softmaxed at `temperature` (log p / T): the same top-1
    on every input, much lower confidence. What silent drift or a bad quantization looks like."""
    proto = onnx.load(str(model.path))
    g = proto.graph
    inner = "inner_" + model.output_name
    for node in g.node:
        node.output[:] = [inner if o == model.output_name else o for o in node.output]
    g.initializer.extend([numpy_helper.from_array(np.array(1e-12, np.float32), "epsilon"),
                          numpy_helper.from_array(np.array(temperature, np.float32), "temperature")])
    g.node.extend([
        helper.make_node("Add", [inner, "epsilon"], ["nonzero"]),
        helper.make_node("Log", ["nonzero"], ["log_p"]),
        helper.make_node("Div", ["log_p", "temperature"], ["tempered"]),
        helper.make_node("Softmax", ["tempered"], [model.output_name], axis=1),
    ])
    onnx.checker.check_model(proto)
    onnx.save(proto, str(out))
    return out


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


@pytest.mark.parametrize("max_confidence_drop", [0.2, None])
def test_a_model_whose_confidence_collapses_is_rolled_back_only_when_the_policy_judges_it(
        device, digits_mlp: SampleModel, tmp_path: Path, max_confidence_drop: float | None) -> None:
    srv, activator, probation, current = device
    candidate = active(flattened_variant(digits_mlp, 10.0, tmp_path / "flat.onnx"), "2")
    if max_confidence_drop is not None:
        gate = ProcessGate(intra_op_threads=1).evaluate(
            GateInput(candidate=candidate.ref.target, runtime="onnxruntime", precision="fp32", device="cpu",
                      model_path=candidate.path, golden_path=digits_mlp.golden_path,
                      hardware_class="x86_64-cpu", current_path=current.path, current_runtime="onnxruntime"),
            GatePolicy(min_accuracy=0.9, min_agreement=0.95, max_latency_regression_ratio=3.0))
        assert gate.verdict.passed, gate.verdict.reasons  # same top-1 everywhere: accuracy and agreement hold

    old_version = srv.models.model("digits").current
    with Traffic(srv.url, digits_mlp.golden.inputs) as warm:
        wait_until(lambda: len(warm.versions) >= 30, 30, message="baseline traffic")
    activator.activate(candidate)
    # latency is not what this test is about: a busy test machine must not decide it
    policy = ProbationPolicy(window_s=120 if max_confidence_drop is not None else 3.0, min_agreement=0.9,
                             max_latency_p99_ratio=1000.0, max_confidence_drop=max_confidence_drop)
    with Traffic(srv.url, digits_mlp.golden.inputs) as live:
        if max_confidence_drop is None:
            wait_until(lambda: len(live.versions) >= 1, 30, message="live traffic")
        result = probation.watch(candidate, policy)
        shadow = result.detail["figures"]["shadow"]
        assert shadow["confidence_rows"] >= LIMITS.min_shadow_rows
        assert shadow["agreement"] == 1.0  # top-1 never changed: only confidence tells
        assert shadow["mean_confidence_previous"] - shadow["mean_confidence_new"] > 0.3
        assert shadow["confidence_drop"] == pytest.approx(
            shadow["mean_confidence_previous"] - shadow["mean_confidence_new"])
        if max_confidence_drop is None:
            assert result.passed, result.reason
            assert srv.models.model("digits").previous is None  # committed
        else:
            assert not result.passed
            reason = result.reason or ""
            assert reason.startswith("confidence_drop "), reason
            assert f"{shadow['mean_confidence_new']:.4f} (new)" in reason
            assert f"{shadow['mean_confidence_previous']:.4f} (previous)" in reason
            assert result.detail["policy"]["max_confidence_drop"] == 0.2
            activator.rollback(current)
            assert srv.models.model("digits").current is old_version
            n = len(live.versions)
            wait_until(lambda: len(live.versions) >= n + 10, 30, message="traffic after rollback")
    assert live.failed == 0 and warm.failed == 0
    assert live.versions[-1] == ("2" if max_confidence_drop is None else "1")


def test_a_healthy_model_commits_and_releases_the_previous(device, digits_mlp: SampleModel,
                                                          tmp_path: Path) -> None:
    srv, activator, probation, current = device
    candidate = active(shutil.copy(digits_mlp.path, tmp_path / "same.onnx"), "2")
    activator.activate(candidate)
    previous = srv.models.model("digits").previous
    assert previous is not None and not previous.closed
    with Traffic(srv.url, digits_mlp.golden.inputs) as live:
        result = probation.watch(candidate, ProbationPolicy(window_s=1.5, min_agreement=0.99,
                                                            max_confidence_drop=0.01))
    assert result.passed, result.reason
    figures_ = result.detail["figures"]
    assert figures_["requests"] > 0 and figures_["shadow"]["agreement"] == 1.0
    assert figures_["shadow"]["confidence_drop"] in (None, 0.0)  # the same model: not a hair less sure
    assert srv.models.model("digits").previous is None and previous.closed
    assert live.failed == 0
