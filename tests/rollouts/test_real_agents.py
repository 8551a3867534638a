"""A rollout to real agents: `edgefleet-agent run` processes with real ONNX Runtime, a real Mosquitto,
a signed image repository over HTTP, and this package's bridge, engine and director assigner.

v1 of the digits model rolls out in two waves and every agent serves it; the scrambled v2 (it loads and
runs, its accuracy collapses) fails the canary's own gate, the rollout halts in wave 1, and the other
agents are never assigned v2 and keep serving v1.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from controller.rollouts import RolloutState
from controller.rollouts.plan import WaveSpec
from controller.rollouts.signals import DeviceState
from controller.sample_models import SampleModel
from manifests.assignment import ReleaseRef
from tests.agent.bad_models import scrambled_weights

from .real_fleet_harness import RealFleet

pytestmark = pytest.mark.slow
AGENTS = ["edge-a", "edge-b", "edge-c"]
WAVES = (WaveSpec(count=1, soak_s=1), WaveSpec(percent=100, soak_s=1))


@pytest.fixture
def fleet(tmp_path: Path, mosquitto: Any) -> Iterator[RealFleet]:
    with RealFleet(tmp_path, mosquitto.port, AGENTS) as f:
        yield f


def test_real_agents_complete_a_good_rollout_and_halt_a_bad_one_at_the_canary(
        fleet: RealFleet, digits_mlp: SampleModel, tmp_path: Path) -> None:
    fleet.start_agents()
    fleet.publish(digits_mlp, "1", 1)
    scrambled = scrambled_weights(digits_mlp.path, tmp_path / "scrambled.onnx")
    fleet.publish(digits_mlp, "2", 2, model_bytes=scrambled.read_bytes())

    good = fleet.settle(fleet.rollout("r-v1", "1", WAVES, device_timeout_s=240).rollout_id, timeout_s=240)
    assert good.state == RolloutState.COMPLETED, good.reason
    assert {p.state for p in good.devices.values()} == {DeviceState.SUCCEEDED}
    for agent in fleet.agents.values():
        assert agent.infer(digits_mlp)[1] == "1"

    bad = fleet.settle(fleet.rollout("r-v2", "2", WAVES, device_timeout_s=240).rollout_id, timeout_s=240)
    assert bad.state == RolloutState.HALTED
    (canary,) = bad.wave_devices(0)
    reason = bad.devices[canary].reason
    assert reason is not None and reason.startswith("gate_failed"), reason
    others = [d for d in AGENTS if d != canary]
    assert all(bad.devices[d].state == DeviceState.PLANNED for d in others)
    latest = {d: fleet.ledger().latest(d) for d in others}
    assert all(e is not None and e.release == ReleaseRef("digits", "1") for e in latest.values()), latest
    for agent in fleet.agents.values():
        assert agent.infer(digits_mlp)[1] == "1"  # the canary refused v2 and still serves v1
