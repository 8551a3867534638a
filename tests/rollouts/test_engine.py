"""The engine over a file store: persist-then-act, restarts after every save, events from the bridge."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

import pytest

from agent import wire
from controller.rollouts import FileRolloutStore, RolloutEngine, RolloutState
from controller.rollouts.errors import PlanError, StaleRecord
from controller.rollouts.plan import DeviceInfo, RolloutSpec, Selector, WaveSpec
from controller.rollouts.records import RolloutRecord
from controller.rollouts.signals import DeviceState
from manifests.assignment import ReleaseRef

from .sim import NEW, OLD, STREAM, fleet_of, spec


class Fleet:
    def __init__(self, devices: dict[str, DeviceInfo]) -> None:
        self.devices = devices

    def targeted(self, selector: Selector) -> Mapping[str, DeviceInfo]:
        return {d: info for d, info in self.devices.items() if selector.matches(info)}


class Assigner:
    """Idempotent per (device, release, rollout), as the port requires."""

    def __init__(self) -> None:
        self.issued: list[tuple[str, ReleaseRef, int]] = []
        self.rollbacks: list[tuple[str, ReleaseRef]] = []  # the assignments asked for as rollbacks
        self.calls = 0
        self._latest: dict[str, tuple[ReleaseRef, str, int]] = {}
        self._version = 0

    def assign(self, device_id: str, release: ReleaseRef, rollout_id: str, *, rollback: bool = False) -> int:
        self.calls += 1
        if rollback:
            self.rollbacks.append((device_id, release))
        latest = self._latest.get(device_id)
        if latest is not None and latest[:2] == (release, rollout_id):
            return latest[2]
        self._version += 1
        self._latest[device_id] = (release, rollout_id, self._version)
        self.issued.append((device_id, release, self._version))
        return self._version

    def flush(self, timeout_s: float = 60.0) -> None:
        pass


class Crash(Exception):
    pass


class CrashingStore(FileRolloutStore):
    """Dies right after the n-th successful save, like a controller killed at that point."""

    def __init__(self, root: Path, crash_after_saves: int) -> None:
        super().__init__(root)
        self.remaining = crash_after_saves

    def save(self, record: RolloutRecord) -> RolloutRecord:
        stored = super().save(record)
        self.remaining -= 1
        if self.remaining == 0:
            raise Crash()
        return stored


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _event(device_id: str, kind: str, version: int | None, seq: int) -> wire.Event:
    return wire.Event(device_id, STREAM, seq, 0.0, kind, version, "r1", NEW.model, NEW.version, None, {})


def drive(engine: RolloutEngine, clock: Clock, devices: list[str], steps: int = 60) -> None:
    """Let every assigned device commit, step, and advance time until the rollout stops."""
    seq = 0
    for _ in range(steps):
        record = engine.store.load("r1")
        if record.state.terminal:
            return
        for device_id in devices:
            progress = record.devices[device_id]
            if progress.state == DeviceState.ASSIGNED:
                seq += 1
                engine.handle_event(_event(device_id, "committed", progress.assignment_version, seq))
        engine.step()
        clock.now += 61


def test_engine_completes_a_rollout_and_publishes_each_device_once(tmp_path: Path) -> None:
    fleet, assigner, clock = Fleet(fleet_of(20)), Assigner(), Clock()
    engine = RolloutEngine(FileRolloutStore(tmp_path), fleet, assigner, clock)
    engine.create("r1", spec(), "alice")
    drive(engine, clock, list(fleet.devices))
    assert engine.store.load("r1").state == RolloutState.COMPLETED
    assert sorted(d for d, _, _ in assigner.issued) == sorted(fleet.devices)


@pytest.mark.parametrize("crash_after", range(1, 14))
def test_controller_killed_after_any_save_carries_on(tmp_path: Path, crash_after: int) -> None:
    fleet, assigner, clock = Fleet(fleet_of(20)), Assigner(), Clock()
    engine = RolloutEngine(CrashingStore(tmp_path, crash_after), fleet, assigner, clock, save_every=3)
    engine.create("r1", spec(), "alice")
    with pytest.raises(Crash):
        drive(engine, clock, list(fleet.devices))
    restarted = RolloutEngine(FileRolloutStore(tmp_path), fleet, assigner, clock, save_every=3)
    drive(restarted, clock, list(fleet.devices))
    final = restarted.store.load("r1")
    assert final.state == RolloutState.COMPLETED
    assert {p.state for p in final.devices.values()} == {DeviceState.SUCCEEDED}
    # Republished after the crash maybe, but never a second version for the same release.
    assert sorted(d for d, _, _ in assigner.issued) == sorted(fleet.devices)
    assert [t.trigger for t in final.history].count("soaked_last") == 1


class CrashingAssigner(Assigner):
    """Dies right after the n-th publish, before the engine could record its version."""

    def __init__(self, crash_after_calls: int) -> None:
        super().__init__()
        self.remaining = crash_after_calls

    def assign(self, device_id: str, release: ReleaseRef, rollout_id: str, *, rollback: bool = False) -> int:
        version = super().assign(device_id, release, rollout_id, rollback=rollback)
        self.remaining -= 1
        if self.remaining == 0:
            raise Crash()
        return version


@pytest.mark.parametrize("crash_after", [1, 2, 5, 11, 19])
def test_controller_killed_between_publish_and_save_does_not_bump_versions(tmp_path: Path,
                                                                           crash_after: int) -> None:
    fleet, clock = Fleet(fleet_of(20)), Clock()
    assigner = CrashingAssigner(crash_after)
    engine = RolloutEngine(FileRolloutStore(tmp_path), fleet, assigner, clock, save_every=4)
    engine.create("r1", spec(), "alice")
    with pytest.raises(Crash):
        drive(engine, clock, list(fleet.devices))
    restarted = RolloutEngine(FileRolloutStore(tmp_path), fleet, assigner, clock, save_every=4)
    drive(restarted, clock, list(fleet.devices))
    assert restarted.store.load("r1").state == RolloutState.COMPLETED
    assert sorted(d for d, _, _ in assigner.issued) == sorted(fleet.devices)
    assert assigner.calls > len(fleet.devices)  # the unconfirmed publish was repeated


def test_canary_gate_failure_halts_and_rollback_command_reverts(tmp_path: Path) -> None:
    fleet, assigner, clock = Fleet(fleet_of(10)), Assigner(), Clock()
    engine = RolloutEngine(FileRolloutStore(tmp_path), fleet, assigner, clock)
    engine.create("r1", spec(), "alice")
    engine.step()
    (canary, _, version), = assigner.issued
    engine.handle_event(_event(canary, "gate_failed", version, 1))
    engine.step()
    assert engine.store.load("r1").state == RolloutState.HALTED
    record = engine.command("r1", "rollback", "bob")
    assert record.state == RolloutState.ROLLED_BACK
    assert assigner.issued[-1][:2] == (canary, OLD)
    assert record.devices[canary].state == DeviceState.REVERTED
    assert len(assigner.issued) == 2
    assert assigner.rollbacks == [(canary, OLD)]  # only the revert waives the accuracy-drop check


def test_automatic_revert_of_a_failing_wave_is_a_rollback_assignment(tmp_path: Path) -> None:
    fleet, assigner, clock = Fleet(fleet_of(10)), Assigner(), Clock()
    engine = RolloutEngine(FileRolloutStore(tmp_path), fleet, assigner, clock)
    engine.create("r1", spec(auto_rollback=True), "alice")
    engine.step()
    (canary, _, version), = assigner.issued
    engine.handle_event(_event(canary, "probation_failed", version, 1))
    engine.step()
    assert engine.store.load("r1").state == RolloutState.ROLLED_BACK
    assert assigner.rollbacks == [(canary, OLD)]
    assert [(d, r) for d, r, _ in assigner.issued] == [(canary, NEW), (canary, OLD)]


def test_a_fleet_rollback_rollout_needs_a_release_the_fleet_ran_and_signs_rollbacks(tmp_path: Path) -> None:
    fleet, assigner, clock = Fleet(fleet_of(4)), Assigner(), Clock()
    engine = RolloutEngine(FileRolloutStore(tmp_path), fleet, assigner, clock)
    never_ran = replace(spec((WaveSpec(percent=100, soak_s=0),)), release=ReleaseRef("digits", "0"), rollback=True)
    with pytest.raises(PlanError, match="digits 0 runs on no device"):
        engine.create("rb0", never_ran, "alice")
    # every device runs OLD now: rolling a (hypothetically newer) fleet back to OLD is allowed
    back = replace(spec((WaveSpec(percent=100, soak_s=0),)), release=OLD, rollback=True)
    engine.create("rb1", back, "alice")
    engine.step()
    assert sorted(assigner.rollbacks) == sorted((d, OLD) for d in fleet.devices)
    # a rollout that delivered a release is proof too, once devices moved on from it
    engine.create("r1", spec((WaveSpec(percent=100, soak_s=0),)), "alice")
    drive(engine, clock, list(fleet.devices))
    assert engine.store.load("r1").state == RolloutState.COMPLETED
    fleet.devices = {d: replace(i, active_release=ReleaseRef("digits", "3")) for d, i in fleet.devices.items()}
    engine.create("rb2", replace(back, release=NEW), "alice")


def test_admission_refuses_before_anything_is_stored(tmp_path: Path) -> None:
    def admit(rollout: RolloutSpec) -> None:
        raise PlanError(f"{rollout.release.model} {rollout.release.version} is blocked")

    engine = RolloutEngine(FileRolloutStore(tmp_path), Fleet(fleet_of(3)), Assigner(), Clock(), admit=admit)
    with pytest.raises(PlanError, match="digits 2 is blocked"):
        engine.create("r1", spec(), "alice")
    assert engine.store.list_ids() == []


def test_create_refuses_an_empty_selection_and_duplicate_ids(tmp_path: Path) -> None:
    engine = RolloutEngine(FileRolloutStore(tmp_path), Fleet(fleet_of(3)), Assigner(), Clock())
    nobody = spec().__class__(NEW, Selector(tags=frozenset({"nobody"})), (WaveSpec(count=1),))
    with pytest.raises(PlanError, match="matches no device"):
        engine.create("r0", nobody, "alice")
    engine.create("r0", spec(), "alice")
    with pytest.raises(StaleRecord):
        engine.create("r0", spec(), "alice")
    with pytest.raises(PlanError):
        engine.create("bad/id", spec(), "alice")


def test_stale_writer_is_refused(tmp_path: Path) -> None:
    store = FileRolloutStore(tmp_path)
    engine = RolloutEngine(store, Fleet(fleet_of(3)), Assigner(), Clock())
    first = engine.create("r1", spec(), "alice")
    store.save(first)
    with pytest.raises(StaleRecord):
        store.save(first)
