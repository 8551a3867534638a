"""Rollouts end to end over a real Mosquitto: controller (bridge, engine, director signing) + 20 agents.

Agents are `AgentSession`s with persisted outboxes that verify every assignment with the manifests'
director checks; the update itself is scripted per release (see fleet_harness). Covered: three waves
complete; a failing canary halts with every other device untouched; a probation regression rolls its
wave back; a broker restart and a controller kill mid-rollout; a device offline during the rollout.
"""

from __future__ import annotations

import collections
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from controller.rollouts import RolloutState
from controller.rollouts.assigner import FileAssignmentLedger
from controller.rollouts.plan import HealthPolicy, RolloutSpec, Selector, WaveSpec
from controller.rollouts.signals import DeviceState
from manifests.assignment import ReleaseRef
from manifests.keyring import Keyring
from tests.services import wait_until

from .fleet_harness import (
    BASE,
    GATE_FAILS,
    GOOD,
    PROBATION_REGRESSES,
    Controller,
    ControllerFleetView,
    SimDevice,
)

N = 20
DEVICES = [f"dev-{i:02d}" for i in range(N)]


class Fleet:
    def __init__(self, port: int, tmp: Path) -> None:
        self.port, self.tmp = port, tmp
        self.keyring = Keyring.create(tmp / "keys")
        self.view = ControllerFleetView({d: frozenset({"lab"}) for d in DEVICES})
        self.controller = Controller(port, tmp / "controller", self.keyring, self.view).start()
        self.devices: dict[str, SimDevice] = {}

    def start_devices(self, ids: list[str]) -> None:
        for device_id in ids:
            self.devices[device_id] = SimDevice(device_id, self.port, self.keyring, self.tmp / "devices").start()
        wait_until(lambda: all(self.view.devices[d].online for d in ids), timeout_s=20, message="devices online")

    def rollout(self, version: str, **policy: Any) -> None:
        spec = RolloutSpec(ReleaseRef("digits", version), Selector(tags=frozenset({"lab"})),
                           (WaveSpec(count=1, soak_s=0.3), WaveSpec(percent=50, soak_s=0.3),
                            WaveSpec(percent=100, soak_s=0.3)),
                           HealthPolicy(device_timeout_s=30, **policy))
        self.controller.engine.create("r1", spec, "alice")

    def record(self) -> Any:
        return self.controller.engine.store.load("r1")

    def wait_state(self, state: RolloutState, timeout_s: float = 40) -> Any:
        wait_until(lambda: self.record().state == state, timeout_s=timeout_s, message=f"rollout {state.value}")
        return self.record()

    def close(self) -> None:
        for device in self.devices.values():
            device.stop()
        self.controller.kill()


@pytest.fixture
def fleet(mosquitto: Any, tmp_path: Path) -> Iterator[Fleet]:
    f = Fleet(mosquitto.port, tmp_path)
    try:
        yield f
    finally:
        f.close()


def _versions_per_device(fleet: Fleet) -> dict[str, int | None]:
    ledger = FileAssignmentLedger(fleet.tmp / "controller" / "ledger")
    return {d: (e.version if (e := ledger.latest(d)) else None) for d in DEVICES}


def _assert_clean_history(record: Any) -> None:
    triggers = [t.trigger for t in record.history]
    assert triggers == ["create", "start", "settled", "soaked", "settled", "soaked", "settled", "soaked_last"]


def test_three_waves_over_twenty_agents_complete(fleet: Fleet) -> None:
    fleet.start_devices(DEVICES)
    fleet.rollout(GOOD)
    record = fleet.wait_state(RolloutState.COMPLETED)
    assert [len(record.wave_devices(w)) for w in range(3)] == [1, 9, 10]
    assert {p.state for p in record.devices.values()} == {DeviceState.SUCCEEDED}
    assert all(fleet.devices[d].releases() == [GOOD] for d in DEVICES)
    _assert_clean_history(record)


def test_failing_canary_halts_at_wave_one_and_nobody_else_is_touched(fleet: Fleet) -> None:
    fleet.start_devices(DEVICES)
    fleet.rollout(GATE_FAILS)
    record = fleet.wait_state(RolloutState.HALTED)
    (canary,) = record.wave_devices(0)
    assert record.devices[canary].reason.startswith("gate_failed")
    assert "wave 1" in record.reason
    assert fleet.devices[canary].releases() == [GATE_FAILS]
    assert all(fleet.devices[d].releases() == [] for d in DEVICES if d != canary)
    assert [v for d, v in _versions_per_device(fleet).items() if d != canary] == [None] * (N - 1)


def test_probation_regression_rolls_back_its_wave(fleet: Fleet) -> None:
    fleet.start_devices(DEVICES)
    fleet.rollout(PROBATION_REGRESSES, auto_rollback=True)
    record = fleet.wait_state(RolloutState.ROLLED_BACK)
    (canary,) = record.wave_devices(0)
    wait_until(lambda: fleet.record().devices[canary].state == DeviceState.REVERTED, message="revert published")
    wait_until(lambda: fleet.devices[canary].releases() == [PROBATION_REGRESSES, BASE.version],
               message="canary got the rollback assignment naming the previous release")
    assert sum(1 for d in DEVICES if fleet.devices[d].releases()) == 1
    assert "probation" in (record.reason or "")


def test_broker_restart_mid_rollout_loses_and_duplicates_nothing(fleet: Fleet, mosquitto: Any) -> None:
    fleet.start_devices(DEVICES)
    fleet.rollout(GOOD)
    wait_until(lambda: fleet.record().wave >= 1, message="second wave")
    mosquitto.stop()
    mosquitto.restart()
    record = fleet.wait_state(RolloutState.COMPLETED, timeout_s=60)
    _assert_clean_history(record)
    assert {p.state for p in record.devices.values()} == {DeviceState.SUCCEEDED}
    assert all(fleet.devices[d].releases() == [GOOD] for d in DEVICES)  # each device exactly one update
    assert set(_versions_per_device(fleet).values()) == {1}


def test_controller_killed_mid_rollout_carries_on(fleet: Fleet) -> None:
    fleet.start_devices(DEVICES)
    fleet.rollout(GOOD)
    wait_until(lambda: fleet.record().wave >= 1, message="second wave")
    fleet.controller.kill()
    fleet.controller = Controller(fleet.port, fleet.tmp / "controller", fleet.keyring, fleet.view).start()
    record = fleet.wait_state(RolloutState.COMPLETED, timeout_s=60)
    _assert_clean_history(record)
    assert all(fleet.devices[d].releases() == [GOOD] for d in DEVICES)
    assert collections.Counter(_versions_per_device(fleet).values()) == {1: N}


def test_device_offline_during_the_rollout_converges_when_it_returns(fleet: Fleet) -> None:
    late = DEVICES[-1]
    fleet.start_devices(DEVICES[:-1])
    fleet.rollout(GOOD, min_reporting_ratio=0.8)
    record = fleet.wait_state(RolloutState.COMPLETED)
    assert record.devices[late].state == DeviceState.ASSIGNED
    fleet.start_devices([late])
    wait_until(lambda: fleet.record().devices[late].state == DeviceState.SUCCEEDED, timeout_s=20,
               message="late device caught up from the retained assignment")
    assert fleet.devices[late].releases() == [GOOD]
