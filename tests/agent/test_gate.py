"""The gate on real models in a real child process: good models pass, each kind of bad model is
refused with its own reason, a crashing or hanging child fails the gate without hurting the caller,
and the verdict is a pure function of the report."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from agent.gate import GateInput, GateReport, GateSettings, ModelFigures, ProcessGate, judge
from controller.sample_models import SampleModel
from manifests.assignment import GatePolicy
from tests.agent import bad_models

FAST = GateSettings(latency_rounds=200, latency_budget_s=5.0, warmup_rounds=5, timeout_s=120)
POLICY = GatePolicy()  # defaults: agreement >= 0.95, p50 regression <= 1.5x


def gate_input(path: Path, sample: SampleModel, current: bool = True, precision: str = "fp32") -> GateInput:
    return GateInput(candidate=f"models/digits/2/{path.name}", runtime="onnxruntime", precision=precision,
                     device="cpu", model_path=path, golden_path=sample.golden_path, hardware_class="test",
                     current_path=sample.path if current else None,
                     current_runtime="onnxruntime" if current else None)


def test_good_model_passes_with_full_figures(digits_mlp: SampleModel) -> None:
    outcome = ProcessGate(FAST, intra_op_threads=1).evaluate(gate_input(digits_mlp.path, digits_mlp), POLICY)
    r = outcome.report
    assert outcome.verdict.passed, outcome.verdict.reasons
    assert r.measured.loaded and r.measured.samples == len(digits_mlp.golden.labels)
    assert r.measured.accuracy == pytest.approx(digits_mlp.accuracy)
    assert r.measured.agreement == 1.0 and r.agreement_with_current == 1.0
    assert r.current is not None and r.current.accuracy == pytest.approx(digits_mlp.accuracy)
    for figures in (r.measured, r.current):
        assert figures.latency_p50_ms is not None and 0 < figures.latency_p50_ms <= figures.latency_p95_ms
    assert r.latency_rounds > 5
    assert r.measured.peak_rss_mb is not None and r.measured.process_peak_rss_mb is not None
    assert 0 < r.measured.peak_rss_mb < r.measured.process_peak_rss_mb
    assert GateReport.from_dict(r.to_dict()) == r


BAD = {
    # builder: reason code the verdict must carry
    "scrambled_weights": "agreement_below_min",
    "nan_outputs": "outputs_not_finite",
    "hidden_heavy_op": "latency_regression",
    "unloadable": "load_failed",
    "unsupported_opset": "load_failed",
}


@pytest.mark.parametrize("kind", sorted(BAD))
def test_bad_models_are_refused_with_the_right_reason(kind: str, digits_mlp: SampleModel, tmp_path: Path) -> None:
    path = getattr(bad_models, kind)(digits_mlp.path, tmp_path / f"{kind}.onnx")
    outcome = ProcessGate(FAST, intra_op_threads=1).evaluate(gate_input(path, digits_mlp), POLICY)
    assert not outcome.verdict.passed
    codes = [reason.split(":")[0] for reason in outcome.verdict.reasons]
    assert BAD[kind] in codes, outcome.verdict.reasons
    m = outcome.report.measured
    if kind == "scrambled_weights":
        assert m.accuracy is not None and m.accuracy < 0.5 and "accuracy_below_current" in codes
    if kind == "nan_outputs":
        # argmax would have "agreed" on most rows; the finite check catches it
        assert m.nonfinite_values == len(digits_mlp.golden.labels)
    if kind == "hidden_heavy_op":
        assert m.agreement == 1.0 and m.accuracy == pytest.approx(digits_mlp.accuracy)
        cur = outcome.report.current
        assert cur is not None and cur.latency_p50_ms is not None and m.latency_p50_ms is not None
        assert m.latency_p50_ms >= 10 * cur.latency_p50_ms
    if kind == "unsupported_opset":
        assert "opset" in (m.load_error or "").lower()


def test_int8_digits_variant_passes(digits_mlp: SampleModel, tmp_path: Path) -> None:
    path = bad_models.static_int8(digits_mlp.path, tmp_path / "int8.onnx", digits_mlp.golden.inputs)
    outcome = ProcessGate(FAST, intra_op_threads=1).evaluate(gate_input(path, digits_mlp, precision="int8"), POLICY)
    assert outcome.verdict.passed, outcome.verdict.reasons
    assert outcome.report.precision == "int8"


@pytest.mark.parametrize("fault,expected", [("segv", "crashed: killed by SIGSEGV"), ("hang", "timeout:")])
def test_crashing_or_hanging_child_fails_the_gate_not_the_agent(fault: str, expected: str,
                                                                digits_mlp: SampleModel) -> None:
    child = [sys.executable, str(Path(__file__).with_name("faulty_gate_child.py")), fault]
    gate = ProcessGate(dataclasses.replace(FAST, timeout_s=2.0), command=child)
    outcome = gate.evaluate(gate_input(digits_mlp.path, digits_mlp), POLICY)
    assert not outcome.verdict.passed
    assert outcome.verdict.reasons[0].startswith(expected), outcome.verdict.reasons


def test_budgets_are_enforced(digits_mlp: SampleModel) -> None:
    policy = GatePolicy(min_accuracy=0.999, max_latency_p95_ms=1e-6, max_memory_mb=0.001)
    outcome = ProcessGate(FAST, intra_op_threads=1).evaluate(gate_input(digits_mlp.path, digits_mlp, current=False),
                                                             policy)
    codes = {reason.split(":")[0] for reason in outcome.verdict.reasons}
    assert codes == {"accuracy_below_min", "latency_p95_over_budget", "memory_over_budget"}
    assert outcome.report.current is None


def _report(candidate_p50: float, current_p50: float, accuracy: float = 0.97) -> GateReport:
    figures = ModelFigures(loaded=True, samples=100, accuracy=accuracy, agreement=1.0,
                           latency_p50_ms=candidate_p50, latency_p95_ms=candidate_p50 * 1.2, peak_rss_mb=10.0)
    current = ModelFigures(loaded=True, samples=100, accuracy=0.97, agreement=1.0, latency_p50_ms=current_p50,
                           latency_p95_ms=current_p50 * 1.2)
    return GateReport("c", "onnxruntime", "fp32", "test", figures, current)


def test_verdict_is_a_pure_function_of_report_and_policy() -> None:
    settings = GateSettings()
    policy = GatePolicy(max_latency_regression_ratio=1.5)
    # 1.7x on a 10 microsecond model is below the noise floor; on a 5 ms model it is a regression
    assert judge(_report(0.017, 0.010), policy, settings).passed
    slow = judge(_report(8.5, 5.0), policy, settings)
    assert not slow.passed and slow.reasons[0].startswith("latency_regression: 1.70x the current model (p50 8.500 ms")
    # the paired per-round ratio, when measured, is what counts: both halves of a round saw the same load
    assert judge(dataclasses.replace(_report(8.5, 5.0), paired_latency_ratio=1.1), policy, settings).passed
    assert not judge(dataclasses.replace(_report(5.5, 5.0), paired_latency_ratio=1.6), policy, settings).passed
    assert judge(_report(7.0, 5.0), policy, settings).passed
    assert judge(_report(8.5, 5.0), dataclasses.replace(policy, max_latency_regression_ratio=None), settings).passed
    worse = judge(_report(5.0, 5.0, accuracy=0.90), policy, settings)
    assert worse.reasons == ("accuracy_below_current: 0.9000 < current 0.9700 - 0.02",)
    assert judge(_report(8.5, 5.0), policy, settings) == judge(_report(8.5, 5.0), policy, settings)


def test_the_signed_policy_sets_the_allowed_accuracy_drop_and_a_rollback_waives_only_that() -> None:
    settings = GateSettings()
    worse = _report(5.0, 5.0, accuracy=0.80)
    assert judge(worse, GatePolicy(max_accuracy_drop=0.2), settings).passed
    strict = judge(worse, GatePolicy(max_accuracy_drop=0.1), settings)
    assert strict.reasons == ("accuracy_below_current: 0.8000 < current 0.9700 - 0.1",)
    waived = GatePolicy(max_accuracy_drop=None)
    assert judge(worse, waived, settings).passed
    # the waiver leaves every other check standing: the release's own floor, finite outputs, latency
    floor = judge(worse, dataclasses.replace(waived, min_accuracy=0.85), settings)
    assert floor.reasons == ("accuracy_below_min: 0.8000 < 0.8500",)
    nan = dataclasses.replace(worse, measured=dataclasses.replace(worse.measured, nonfinite_values=3))
    assert judge(nan, waived, settings).reasons[0].startswith("outputs_not_finite")
    slow = judge(_report(9.0, 5.0, accuracy=0.80), waived, settings)
    assert [r.split(":")[0] for r in slow.reasons] == ["latency_regression"]


def _agreement(model: Path, sample: SampleModel) -> float:
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    rows = [session.run(None, {name: sample.golden.inputs[i:i + 1]})[0] for i in range(len(sample.golden.labels))]
    top1 = np.argmax(np.concatenate(rows), axis=1)
    return float(np.mean(top1 == np.argmax(sample.golden.reference_outputs, axis=1)))


def test_pretrained_int8_variant_is_judged_on_this_cpu(textdir_classifier: SampleModel, tmp_path: Path) -> None:
    """Static int8 of the real classifier: the gate's verdict must follow what int8 does on *this* CPU
    (on CPUs without VNNI it loses accuracy and must be refused; with VNNI it may pass)."""
    sample = textdir_classifier
    int8 = bad_models.static_int8(sample.path, tmp_path / "cls-int8.onnx", sample.golden.inputs)
    outcome = ProcessGate(FAST, intra_op_threads=1).evaluate(
        dataclasses.replace(gate_input(int8, sample, precision="int8"), candidate="models/textdir/1/int8.onnx"),
        POLICY)
    independent = _agreement(int8, sample)
    assert outcome.report.measured.agreement == pytest.approx(independent)
    assert outcome.verdict.passed == (independent >= POLICY.min_agreement and not any(
        r.startswith(("latency", "accuracy_below_current")) for r in outcome.verdict.reasons)), outcome.verdict
    print(f"textdir int8: agreement {independent:.3f}, verdict {outcome.verdict}")


def test_new_input_signature_is_gated_without_a_comparison(digits_cnn: SampleModel, digits_mlp: SampleModel) -> None:
    """The current model cannot run the new release's golden set: judged on absolute figures only."""
    g = dataclasses.replace(gate_input(digits_cnn.path, digits_cnn), current_path=digits_mlp.path)
    outcome = ProcessGate(FAST, intra_op_threads=1).evaluate(g, POLICY)
    assert outcome.verdict.passed, outcome.verdict.reasons
    assert outcome.report.current is not None and not outcome.report.current.loaded
    assert "cannot run this golden set" in (outcome.report.current.load_error or "")
    assert outcome.report.measured.accuracy == pytest.approx(digits_cnn.accuracy)
