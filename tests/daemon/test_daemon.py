"""`edgefleet-agent run` as a real subprocess against a real Mosquitto, a real signed repository over
HTTP and real ONNX Runtime: assignment → verified, downloaded, gated, activated, served, reported;
garbage → refused while serving continues; restarts and kill -9 → the committed model is served first.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from controller.sample_models import SampleModel
from tests.agent.trees import raspberry_pi_5
from tests.daemon.fleet import AgentProcess, ControllerSide, one_agent, wait_for

HEAVY = ("numpy", "onnxruntime", "openvino", "aiohttp")
UPDATE = ["assignment_received", "download_started", "gate_passed", "activated", "probation_passed", "committed"]


@pytest.fixture
def fleet(tmp_path: Path, mosquitto: Any, request: pytest.FixtureRequest) -> Iterator[tuple[ControllerSide, AgentProcess]]:
    with one_agent(tmp_path, mosquitto.port, f"edge-{request.node.name[5:20].replace('_', '-')}") as pair:
        yield pair


def outcome(controller: ControllerSide, agent: AgentProcess, version: int, timeout_s: float = 120.0) -> str:
    def done() -> str | None:
        kinds = controller.event_kinds(version)
        return next((k for k in ("committed", "failed", "rolled_back") if k in kinds), None)

    return str(wait_for(done, timeout_s, f"the outcome of assignment {version}", agent.log))


def test_assignment_is_served_garbage_is_refused_and_a_restart_serves_at_once(
        fleet: tuple[ControllerSide, AgentProcess], digits_mlp: SampleModel, mosquitto: Any) -> None:
    controller, agent = fleet
    agent.start()
    wait_for(lambda: "online" in controller.presence(), 60, "the agent's online presence", agent.log)
    wait_for(lambda: any(m.startswith("READY=1") for m in agent.notify.messages), 30, "READY=1", agent.log)
    wait_for(lambda: agent.notify.messages.count("WATCHDOG=1") >= 2, 10, "watchdog pings", agent.log)
    status = wait_for(controller.last_status, 10, "a first status")
    assert status.active is None and status.state == "idle"
    assert not agent.serving(digits_mlp)  # nothing to serve yet: the endpoint opens with the first model
    assert agent.mapped_libraries(HEAVY) == set()  # idle: no numpy, runtime or HTTP server loaded

    version = controller.assign(controller.publish_release(digits_mlp, "1", 1))
    assert outcome(controller, agent, version) == "committed", controller.event_kinds()
    assert controller.event_kinds(version) == UPDATE
    gate = controller.event("gate_passed", version)
    assert gate is not None and isinstance(gate.details["accuracy"], float) and gate.details["accuracy"] > 0.9
    assert gate.details["candidate"] == "models/digits/1/ort-fp32.onnx"
    assert {"numpy", "onnxruntime"} <= agent.mapped_libraries(HEAVY)  # now there is a model to serve
    top1, served_version = agent.infer(digits_mlp)
    assert served_version == "1"
    assert (top1 == digits_mlp.golden.reference_outputs[:16].argmax(axis=1)).all()
    status = wait_for(lambda: (s := controller.last_status()) and s.active and s.state == "idle" and s, 10,
                      "status naming the active model")
    assert (status.active.model, status.active.version, status.active.variant) == ("digits", "1", "ort-fp32.onnx")
    assert status.assignment_version == version and status.rollout_id == "r-test"

    # Telemetry: the requests above reach the broker in sequence-numbered batches and /metrics.
    for _ in range(4):
        agent.infer(digits_mlp)
    wait_for(lambda: controller.model_requests("1") >= 5, 30, "telemetry counting the requests", agent.log)
    batch = controller.telemetry[-1]
    assert str(batch.hardware_class).startswith("x86_64") and batch.device_id == controller.device_id
    assert 'edgefleet_model_requests_total{model="digits",version="1",variant="ort-fp32.onnx"}' in agent.metrics()

    controller.publish_raw(b'{"schema": 1, "not": "an envelope"}')
    rejected = wait_for(lambda: controller.event("assignment_rejected"), 30, "the rejection event", agent.log)
    assert rejected.reason == "malformed"
    assert agent.infer(digits_mlp)[1] == "1"

    assert agent.terminate() == 0
    assert "STOPPING=1" in agent.notify.messages
    wait_for(lambda: controller.presence()[-1] == "offline", 10, "offline presence")
    seen = len(controller.events())

    # With the broker down the agent must still serve its committed model, before anything else.
    mosquitto.stop()
    agent.start()
    wait_for(lambda: agent.serving(digits_mlp), 60, "serving after a restart without a broker", agent.log)
    assert agent.infer(digits_mlp)[1] == "1"
    doc = agent.status()
    assert doc["daemon"]["running"] and doc["current"]["version"] == "1" and doc["update"]["state"] == "IDLE"
    assert doc["server_ready"] is True
    mosquitto.restart()
    wait_for(lambda: controller.presence()[-1] == "online", 60, "online again after the broker returned", agent.log)
    assert "download_started" not in [e.kind for e in controller.events()[seen:]]


def scrambled(model: SampleModel) -> bytes:
    """The same graph with every weight matrix shuffled: it loads and runs, and its accuracy collapses."""
    proto = onnx.load(str(model.path))
    rng = np.random.default_rng(7)
    for init in proto.graph.initializer:
        array = numpy_helper.to_array(init)
        if array.dtype == np.float32 and array.size > 16:
            shuffled = rng.permutation(array.ravel()).reshape(array.shape)
            init.CopyFrom(numpy_helper.from_array(shuffled, init.name))
    buffer = io.BytesIO()
    onnx.save(proto, buffer)
    return buffer.getvalue()


def test_kill_during_probation_rolls_back_and_a_bad_model_fails_the_gate(
        fleet: tuple[ControllerSide, AgentProcess], digits_mlp: SampleModel, tmp_path: Path) -> None:
    controller, agent = fleet
    # A fake Raspberry Pi 5 tree for the hardware probe; the runtimes are this machine's real ones.
    agent.write_config(hardware_probe_root=str(raspberry_pi_5(tmp_path / "rpi5")))
    agent.start()
    v1 = controller.assign(controller.publish_release(digits_mlp, "1", 1))
    assert outcome(controller, agent, v1) == "committed"
    gate = controller.event("gate_passed", v1)
    assert gate is not None and str(gate.details["hardware_class"]).startswith("rpi-5")

    # v2 is activated, then the agent dies in probation: the restart serves v1 and rolls v2 back.
    v2 = controller.assign(controller.publish_release(digits_mlp, "2", 2), probation_window_s=120)
    wait_for(lambda: controller.event("activated", v2), 120, "v2 activated", agent.log)
    wait_for(lambda: agent.infer(digits_mlp)[1] == "2", 10, "v2 answering")
    agent.kill()
    agent.start()
    assert outcome(controller, agent, v2) == "rolled_back"
    wait_for(lambda: agent.serving(digits_mlp), 30, "serving after the restart", agent.log)
    assert agent.infer(digits_mlp)[1] == "1"
    assert "probation_passed" not in controller.event_kinds(v2)

    # v3 has scrambled weights: the gate refuses it and v1 keeps serving.
    v3 = controller.assign(controller.publish_release(digits_mlp, "3", 3, model_bytes=scrambled(digits_mlp)))
    assert outcome(controller, agent, v3) == "failed"
    failed = controller.event("gate_failed", v3)
    assert failed is not None and "agreement_below_min" in str(failed.details["reasons"])
    assert isinstance(failed.details["agreement"], float) and failed.details["agreement"] < 0.5
    assert agent.infer(digits_mlp)[1] == "1"
    status = wait_for(lambda: (s := controller.last_status()) and s.assignment_version == v3 and s.state == "idle"
                      and s, 10, "status after the refused release")
    assert status.active is not None and status.active.version == "1"
    assert status.last_error is not None and status.last_error.startswith("gate_failed")

    # SIGTERM in the middle of probation: the agent exits cleanly after its grace period without
    # failing the update itself; the next start rolls v4 back from the journal and serves v1.
    agent.write_config(shutdown_grace_s=0.5)
    agent.terminate()
    agent.start()
    v4 = controller.assign(controller.publish_release(digits_mlp, "4", 4), probation_window_s=120)
    wait_for(lambda: controller.event("activated", v4), 120, "v4 activated", agent.log)
    assert agent.terminate() == 0
    assert "the journal resumes it on restart" in agent.log()
    assert "probation_failed" not in controller.event_kinds(v4)
    agent.start()
    assert outcome(controller, agent, v4) == "rolled_back"
    wait_for(lambda: agent.serving(digits_mlp), 30, "serving after the restart", agent.log)
    assert agent.infer(digits_mlp)[1] == "1"
