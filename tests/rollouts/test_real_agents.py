"""A rollout to real agents: `edgefleet-agent run` processes with real ONNX Runtime, a real Mosquitto,
a signed image repository over HTTP, and this package's bridge, engine and director assigner.

v1 of the digits model rolls out in two waves and every agent serves it; the scrambled v2 (it loads and
runs, its accuracy collapses) fails the canary's own gate, the rollout halts in wave 1, and the other
agents are never assigned v2 and keep serving v1.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from controller.mqtt import BridgeConfig, MqttBridge
from controller.rollouts import FileRolloutStore, RolloutEngine, RolloutState
from controller.rollouts.assigner import AssignmentPolicies, DirectorAssigner, FileAssignmentLedger
from controller.rollouts.plan import HealthPolicy, RolloutSpec, Selector, WaveSpec
from controller.rollouts.signals import DeviceState
from controller.sample_models import SampleModel
from manifests.assignment import ProbationPolicy, ReleaseRef, TargetPin
from tests.daemon.fleet import AgentProcess, ControllerSide, wait_for

from .fleet_harness import ControllerFleetView

pytestmark = pytest.mark.slow
AGENTS = ["edge-a", "edge-b", "edge-c"]


def scrambled_model_bytes(model: SampleModel) -> bytes:
    """The same graph with every weight matrix shuffled: it loads and runs, and its accuracy collapses."""
    proto = onnx.load(str(model.path))
    rng = np.random.default_rng(7)
    for init in proto.graph.initializer:
        array = numpy_helper.to_array(init)
        if array.dtype == np.float32 and array.size > 16:
            init.CopyFrom(numpy_helper.from_array(rng.permutation(array.ravel()).reshape(array.shape), init.name))
    buffer = io.BytesIO()
    onnx.save(proto, buffer)
    return buffer.getvalue()


class RealFleet:
    def __init__(self, tmp: Path, port: int) -> None:
        self.repo = ControllerSide(tmp / "repo-side", port, "unused")
        self.view = ControllerFleetView({d: frozenset({"lab"}) for d in AGENTS})
        for d in AGENTS:
            self.view.devices[d] = self.view.devices[d].__class__(d, online=False, tags=frozenset({"lab"}))
        self.pins: dict[ReleaseRef, tuple[TargetPin, ...]] = {}
        self.bridge = MqttBridge(BridgeConfig("127.0.0.1", port, client_id="ctl", share_group=None), self.view)
        self.bridge.start()
        keys = self.repo.keys
        assigner = DirectorAssigner(
            FileAssignmentLedger(tmp / "ledger"), keys.signers("director"), self.bridge, self.pins.__getitem__,
            policies_for=lambda release, rollout: AssignmentPolicies(probation=ProbationPolicy(window_s=1.0)),
            director_roots=keys.root_history("director")[1:])
        self.engine = RolloutEngine(FileRolloutStore(tmp / "rollouts"), self.view, assigner)
        self.view.engine = self.engine
        self.stop = threading.Event()
        threading.Thread(target=self.engine.run, args=(self.stop, 0.2), daemon=True).start()
        self.agents = {}
        for d in AGENTS:
            side = SimpleNamespace(device_id=d, base_url=self.repo.base_url, roots=self.repo.roots)
            (tmp / d).mkdir()
            self.agents[d] = AgentProcess(tmp / d, side, port)  # type: ignore[arg-type]

    def publish(self, model: SampleModel, version: str, counter: int, model_bytes: bytes | None = None) -> None:
        targets = self.repo.publish_release(model, version, counter, model_bytes=model_bytes)
        self.pins[ReleaseRef("digits", version)] = tuple(TargetPin(t.name, t.length, t.sha256) for t in targets)

    def rollout(self, rollout_id: str, version: str) -> Any:
        spec = RolloutSpec(ReleaseRef("digits", version), Selector(tags=frozenset({"lab"})),
                           (WaveSpec(count=1, soak_s=1), WaveSpec(percent=100, soak_s=1)),
                           HealthPolicy(device_timeout_s=240, min_accuracy=0.9))
        return self.engine.create(rollout_id, spec, "alice")

    def settle(self, rollout_id: str, timeout_s: float = 240) -> Any:
        def done() -> Any:
            record = self.engine.store.load(rollout_id)
            return record if record.state in (RolloutState.COMPLETED, RolloutState.HALTED) else None

        logs = lambda: "\n".join(f"--- {d}\n{a.log()[-1500:]}" for d, a in self.agents.items())  # noqa: E731
        return wait_for(done, timeout_s, f"rollout {rollout_id} to settle", logs)

    def close(self) -> None:
        self.stop.set()
        for agent in self.agents.values():
            agent.kill()
            agent.notify.close()
        self.bridge.stop()
        self.repo.close()


@pytest.fixture
def fleet(tmp_path: Path, mosquitto: Any) -> Iterator[RealFleet]:
    f = RealFleet(tmp_path, mosquitto.port)
    try:
        yield f
    finally:
        f.close()


def test_real_agents_complete_a_good_rollout_and_halt_a_bad_one_at_the_canary(
        fleet: RealFleet, digits_mlp: SampleModel) -> None:
    for agent in fleet.agents.values():
        agent.start()
    wait_for(lambda: all(fleet.view.devices[d].online for d in AGENTS), 90, "agents online")
    fleet.publish(digits_mlp, "1", 1)
    fleet.publish(digits_mlp, "2", 2, model_bytes=scrambled_model_bytes(digits_mlp))

    good = fleet.settle(fleet.rollout("r-v1", "1").rollout_id)
    assert good.state == RolloutState.COMPLETED, good.reason
    assert {p.state for p in good.devices.values()} == {DeviceState.SUCCEEDED}
    for agent in fleet.agents.values():
        assert agent.infer(digits_mlp)[1] == "1"

    bad = fleet.settle(fleet.rollout("r-v2", "2").rollout_id)
    assert bad.state == RolloutState.HALTED
    (canary,) = bad.wave_devices(0)
    assert bad.devices[canary].reason.startswith("gate_failed"), bad.devices[canary].reason
    others = [d for d in AGENTS if d != canary]
    assert all(bad.devices[d].state == DeviceState.PLANNED for d in others)
    ledger = FileAssignmentLedger(fleet.engine.store.root.parent / "ledger")  # type: ignore[attr-defined]
    assert all(ledger.latest(d).release == ReleaseRef("digits", "1") for d in others)  # type: ignore[union-attr]
    for agent in fleet.agents.values():
        assert agent.infer(digits_mlp)[1] == "1"  # the canary refused v2 and still serves v1
