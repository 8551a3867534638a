"""The engine end to end on real parts: a signed image repository and director assignment verified by
the trust client (python-tuf), file:// staging, the process-isolated gate on real ONNX models, and a
session-backed activator."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from agent.engine import UpdateEngine
from agent.gate import GateSettings, ProcessGate
from agent.hardware import probe
from agent.slots import FileSlotStore
from agent.staging import BaseUrlLocator
from agent.state import Status
from controller.sample_models import SampleModel
from manifests.assignment import GatePolicy
from manifests.repository import NewTarget
from manifests.verify import VerifiedPlan
from tests.agent import bad_models
from tests.agent.fakes import EventLog
from tests.agent.serving import GoldenProbation, SessionActivator
from tests.manifests.world import World

FAST = GateSettings(latency_rounds=150, latency_budget_s=5.0, warmup_rounds=5, timeout_s=120)


def custom(model: str, version: str, **extra: Any) -> dict[str, Any]:
    return {"kind": "variant", "model": model, "version": version, "release_counter": 1,
            "runtime": "onnxruntime", "precision": "fp32", "arch": "x86_64", **extra}


def publish(world: World, model: str, version: str, variants: dict[str, tuple[Path, dict[str, Any]]],
            golden: Path, gate: GatePolicy | None = None) -> VerifiedPlan:
    targets = world.repo.add_targets(
        [NewTarget(f"models/{model}/{version}/{vid}", path.read_bytes(), custom(model, version, **extra))
         for vid, (path, extra) in variants.items()]
        + [NewTarget(f"models/{model}/{version}/golden.npz", golden.read_bytes(),
                     {"kind": "golden", "model": model, "version": version, "release_counter": 1})])
    changes = {} if gate is None else {"gate": gate}
    return world.client.verify(world.sign(world.assignment(targets, **changes)))


class Device:
    def __init__(self, tmp: Path, world: World, golden_inputs: Any) -> None:
        self.root = tmp / "device"
        self.activator = SessionActivator()
        self.events = EventLog()
        self.engine = UpdateEngine(
            self.root, probe(), BaseUrlLocator((tmp / "repo").as_uri()), ProcessGate(FAST, intra_op_threads=1),
            self.activator, GoldenProbation(self.activator, golden_inputs), self.events)
        self.engine.recover()


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(tmp_path)


def test_gate_rejection_falls_back_to_the_next_variant_then_bad_release_keeps_the_old(
        tmp_path: Path, world: World, digits_mlp: SampleModel) -> None:
    device = Device(tmp_path, world, digits_mlp.golden.inputs)
    v1 = publish(world, "digits", "1", {"ort-fp32.onnx": (digits_mlp.path, {})}, digits_mlp.golden_path)
    assert device.engine.apply(v1).status is Status.SUCCESS

    scrambled = bad_models.scrambled_weights(digits_mlp.path, tmp_path / "scrambled.onnx")
    v2 = publish(world, "digits", "2", {"ort-int8.onnx": (scrambled, {"precision": "int8"}),
                                        "ort-fp32.onnx": (digits_mlp.path, {})}, digits_mlp.golden_path)
    outcome = device.engine.apply(v2)
    assert outcome.status is Status.SUCCESS, outcome.reason
    assert outcome.current is not None and outcome.current.target == "models/digits/2/ort-fp32.onnx"
    assert [g["verdict"]["passed"] for g in outcome.gate_reports] == [False, True]
    assert outcome.gate_reports[0]["verdict"]["reasons"][0].startswith("agreement_below_min")
    v2_events = [e for e in device.events.events if e.deployment_id == outcome.deployment_id]
    assert [e.state for e in v2_events].count("GATE") == 2
    gate_events = [e for e in v2_events if e.previous_state == "GATE"]
    assert gate_events[0].detail["report"]["measured"]["accuracy"] < 0.5  # the full report is published

    nan = bad_models.nan_outputs(digits_mlp.path, tmp_path / "nan.onnx")
    v3 = publish(world, "digits", "3", {"ort-fp32.onnx": (nan, {})}, digits_mlp.golden_path)
    outcome = device.engine.apply(v3)
    assert outcome.status is Status.FAILURE
    assert outcome.reason is not None and "outputs_not_finite" in outcome.reason
    slots = FileSlotStore(device.root)
    current = slots.current()
    assert current is not None and current.target == "models/digits/2/ort-fp32.onnx" and slots.verify(current)
    assert device.activator.serving_ref is not None and device.activator.serving_ref.ref == current


def test_pretrained_classifier_int8_then_fp32(tmp_path: Path, world: World, textdir_classifier: SampleModel) -> None:
    """On this CPU the gate decides between the classifier's static int8 and fp32 variants; whichever
    is served afterwards passed the gate, and a refused int8 always leads to fp32."""
    sample = textdir_classifier
    device = Device(tmp_path, world, sample.golden.inputs)
    v1 = publish(world, "textdir", "1", {"ort-fp32.onnx": (sample.path, {})}, sample.golden_path)
    assert device.engine.apply(v1).status is Status.SUCCESS
    int8 = bad_models.static_int8(sample.path, tmp_path / "cls-int8.onnx", sample.golden.inputs)
    v2 = publish(world, "textdir", "2", {"ort-int8.onnx": (int8, {"precision": "int8"}),
                                         "ort-fp32.onnx": (sample.path, {})}, sample.golden_path)
    outcome = device.engine.apply(v2)
    assert outcome.status is Status.SUCCESS, outcome.reason
    first = outcome.gate_reports[0]
    assert first["report"]["precision"] == "int8"
    expected = "models/textdir/2/ort-int8.onnx" if first["verdict"]["passed"] else "models/textdir/2/ort-fp32.onnx"
    assert outcome.current is not None and outcome.current.target == expected
    print("textdir int8 verdict:", first["verdict"], "served:", expected)


def test_a_signed_rollback_to_a_less_accurate_release_is_served_an_ordinary_assignment_is_not(
        tmp_path: Path, world: World, digits_mlp: SampleModel) -> None:
    """v2 (accurate) serves. An ordinary assignment to the clearly weaker v1 fails on
    accuracy_below_current; the director's rollback assignment to the same v1 (max_accuracy_drop
    waived, everything else still judged) passes and v1 serves."""
    device = Device(tmp_path, world, digits_mlp.golden.inputs)
    weak, weak_golden, weak_accuracy = bad_models.degraded(
        digits_mlp.path, tmp_path / "v1.onnx", digits_mlp.golden.inputs, digits_mlp.golden.labels)
    assert weak_accuracy < digits_mlp.accuracy - 0.1  # clearly worse, not noise

    v2 = publish(world, "digits", "2", {"ort-fp32.onnx": (digits_mlp.path, {})}, digits_mlp.golden_path)
    assert device.engine.apply(v2).status is Status.SUCCESS

    v1_variants = {"ort-fp32.onnx": (weak, {})}
    ordinary = device.engine.apply(publish(world, "digits", "1", v1_variants, weak_golden))
    assert ordinary.status is Status.FAILURE
    assert ordinary.reason is not None and "accuracy_below_current" in ordinary.reason, ordinary.reason
    assert FileSlotStore(device.root).current().target == "models/digits/2/ort-fp32.onnx"  # type: ignore[union-attr]

    rollback_gate = GatePolicy(min_accuracy=weak_accuracy - 0.05, max_accuracy_drop=None)
    rollback = device.engine.apply(publish(world, "digits", "1", v1_variants, weak_golden, gate=rollback_gate))
    assert rollback.status is Status.SUCCESS, rollback.reason
    report = rollback.gate_reports[-1]
    assert report["verdict"]["passed"] and report["report"]["current"]["accuracy"] > report["report"]["measured"][
        "accuracy"] + 0.1  # it was measured against the better current model, and the drop was allowed
    current = FileSlotStore(device.root).current()
    assert current is not None and current.target == "models/digits/1/ort-fp32.onnx" and current.sha256 == (
        rollback.current.sha256 if rollback.current is not None else None)
    assert device.activator.serving_ref is not None and device.activator.serving_ref.ref == current
