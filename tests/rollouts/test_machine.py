"""The rollout state machine as tables: expected state chain, device effects, refusals."""

from __future__ import annotations

import pytest

from controller.rollouts import machine
from controller.rollouts.codec import record_from_json, record_to_json
from controller.rollouts.errors import InvalidCommand
from controller.rollouts.plan import WaveSpec
from controller.rollouts.records import RolloutState
from controller.rollouts.signals import DeviceState

from .sim import NEW, OLD, Sim, fleet_of, spec

S = RolloutState
FULL_CHAIN = ["start->running", "settled->soaking", "soaked->running", "settled->soaking", "soaked->running",
              "settled->soaking", "soaked_last->completed"]


def run_waves(sim: Sim, waves: int) -> None:
    sim.tick()
    for w in range(waves):
        sim.succeed(sim.wave(w))
        sim.tick()
        sim.tick(advance_s=61)


def test_three_waves_over_twenty_devices_complete() -> None:
    sim = Sim(spec(), fleet_of(20))
    assert [len(sim.wave(w)) for w in range(3)] == [1, 9, 10]
    run_waves(sim, 3)
    assert sim.record.state == S.COMPLETED
    assert sim.chain() == FULL_CHAIN
    assert sorted(d for d, _ in sim.published) == sorted(sim.record.devices)  # each device exactly once
    assert {p.state for p in sim.record.devices.values()} == {DeviceState.SUCCEEDED}


def test_soak_waits_its_time_and_ticks_are_idempotent() -> None:
    sim = Sim(spec(), fleet_of(4))
    sim.tick()
    sim.succeed(sim.wave(0))
    assert sim.tick().state == S.SOAKING
    again = machine.tick(sim.record, sim.fleet, sim.now + 59)
    assert again.state == S.SOAKING and again.wave == 0
    assert machine.tick(sim.record, sim.fleet, sim.now) == sim.record
    assert sim.tick(advance_s=60).state == S.RUNNING and sim.record.wave == 1


@pytest.mark.parametrize(
    ("kind", "details", "reason_prefix"),
    [
        ("gate_failed", {"accuracy": 0.4}, "gate_failed"),
        ("assignment_rejected", {}, "assignment_rejected"),
        ("download_failed", {}, "download_failed"),
        ("gate_passed", {"latency_regression_ratio": 2.5}, "regressed: latency_regression_ratio 2.5"),
        ("gate_passed", {"accuracy": 0.80}, "regressed: accuracy 0.8 below minimum 0.9"),
    ],
)
def test_a_failing_canary_halts_at_wave_one_and_leaves_every_other_device_untouched(
        kind: str, details: dict[str, float], reason_prefix: str) -> None:
    sim = Sim(spec(min_accuracy=0.9, max_latency_regression_ratio=1.5), fleet_of(20))
    sim.tick()
    canary = sim.wave(0)[0]
    sim.report(canary, kind, details)
    assert sim.tick().state == S.HALTED
    assert sim.chain() == ["start->running", "breached->halted"]
    assert sim.record.devices[canary].reason.startswith(reason_prefix)  # type: ignore[union-attr]
    assert "wave 1: 1 of 1 devices failed (allowed 0)" in (sim.record.reason or "")
    assert [d for d, _ in sim.published] == [canary]
    assert sim.states(1) == sim.states(2) == {DeviceState.PLANNED}
    assert sim.tick(advance_s=3600).state == S.HALTED  # stays halted on its own


def test_probation_regression_rolls_back_its_wave_only() -> None:
    sim = Sim(spec(auto_rollback=True, max_latency_p99_ratio=2.0), fleet_of(20))
    sim.tick()
    sim.succeed(sim.wave(0))
    sim.tick()
    sim.tick(advance_s=61)
    wave2 = sim.wave(1)
    for device_id in wave2[:5]:
        sim.report(device_id, "gate_passed", {"accuracy": 0.97})
        sim.report(device_id, "committed", {"latency_p99_ratio": 3.1, "error_rate": 0.0})
    sim.report(wave2[5], "gate_passed", {"accuracy": 0.97})
    sim.report(wave2[5], "rolled_back", reason="error rate 0.2 above 0.01")
    assert sim.tick().state == S.ROLLED_BACK
    assert sim.chain()[-1] == "breached_rollback->rolled_back"
    assert sim.states(1) == {DeviceState.REVERTED}
    assert sim.states(0) == {DeviceState.SUCCEEDED}  # the canary passed and keeps the release
    assert sim.states(2) == {DeviceState.PLANNED}
    reverts = [(d, r) for d, r in sim.published if r == OLD]
    assert sorted(d for d, _ in reverts) == wave2
    assert sim.record.devices[wave2[0]].revert_version is not None


def test_failures_within_budget_do_not_halt() -> None:
    sim = Sim(spec(max_failure_ratio=0.2), fleet_of(20))
    sim.tick()
    sim.succeed(sim.wave(0))
    sim.tick()
    sim.tick(advance_s=61)
    wave2 = sim.wave(1)
    sim.report(wave2[0], "gate_failed")
    sim.succeed(wave2[1:])
    assert sim.tick().state == S.SOAKING


def test_offline_device_does_not_block_and_converges_when_it_returns() -> None:
    fleet = fleet_of(6, offline={5})
    sim = Sim(spec((WaveSpec(count=1, soak_s=10), WaveSpec(percent=100, soak_s=10)),
                   min_reporting_ratio=0.5, device_timeout_s=30), fleet)
    run_waves(sim, 1)
    sim.tick()
    offline = "dev-005"
    assert offline in sim.wave(1)
    sim.succeed([d for d in sim.wave(1) if d != offline])
    sim.tick(advance_s=3600)  # far beyond the device timeout: an offline device's clock does not run
    assert sim.record.devices[offline].state == DeviceState.ASSIGNED
    sim.tick(advance_s=10)
    assert sim.record.state == S.COMPLETED
    sim.set_online(offline, True)
    sim.succeed([offline])
    assert sim.record.devices[offline].state == DeviceState.SUCCEEDED


def test_online_device_that_never_reports_times_out_and_counts_as_a_failure() -> None:
    sim = Sim(spec(device_timeout_s=30), fleet_of(3))
    sim.tick()
    assert sim.tick(advance_s=29).state == S.RUNNING
    assert sim.tick(advance_s=2).state == S.HALTED
    assert sim.states(0) == {DeviceState.TIMED_OUT}


@pytest.mark.parametrize(
    ("event_change", "expected"),
    [
        ({"rollout_id": "other"}, DeviceState.ASSIGNED),
        ({"version": 1}, DeviceState.ASSIGNED),  # an older assignment's outcome
        ({}, DeviceState.FAILED),
    ],
)
def test_stale_and_foreign_events_are_ignored(event_change: dict[str, object], expected: DeviceState) -> None:
    sim = Sim(spec(), fleet_of(3))
    sim.tick()
    canary = sim.wave(0)[0]
    sim.report(canary, "gate_failed", **event_change)  # type: ignore[arg-type]
    assert sim.record.devices[canary].state == expected


def test_a_failed_device_never_turns_into_a_success_but_a_success_can_regress() -> None:
    sim = Sim(spec(max_error_rate=0.05), fleet_of(3))
    sim.tick()
    canary = sim.wave(0)[0]
    sim.report(canary, "gate_failed")
    sim.report(canary, "committed")
    assert sim.record.devices[canary].state == DeviceState.FAILED
    sim2 = Sim(spec(max_error_rate=0.05), fleet_of(3))
    sim2.tick()
    canary = sim2.wave(0)[0]
    sim2.succeed([canary])
    sim2.report(canary, "probation_passed", {"error_rate": 0.5})
    assert sim2.record.devices[canary].state == DeviceState.FAILED


def test_pause_holds_assignments_and_the_soak_clock() -> None:
    sim = Sim(spec(), fleet_of(10))
    sim.tick()
    sim.succeed(sim.wave(0))
    sim.tick()
    sim.now += 30
    sim.record = machine.command(sim.record, "pause", "bob", sim.now)
    assert sim.tick(advance_s=600).state == S.PAUSED
    sim.record = machine.command(sim.record, "resume", "bob", sim.now)
    assert sim.tick(advance_s=29).state == S.SOAKING  # 30 + 29 s of soak, not 659
    assert sim.tick(advance_s=2).state == S.RUNNING
    assert [(t.trigger, t.actor) for t in sim.record.history if t.actor == "bob"] == [("pause", "bob"),
                                                                                      ("resume", "bob")]


def test_resume_after_halt_accepts_the_failures_seen_so_far() -> None:
    sim = Sim(spec(), fleet_of(10))
    sim.tick()
    sim.report(sim.wave(0)[0], "gate_failed")
    assert sim.tick().state == S.HALTED
    sim.record = machine.command(sim.record, "resume", "carol", sim.now, reason="known flaky canary")
    assert sim.tick().state == S.SOAKING
    sim.tick(advance_s=61)
    assert sim.record.wave == 1 and sim.states(1) == {DeviceState.ASSIGNED}
    sim.report(sim.wave(1)[0], "gate_failed")
    assert sim.tick().state == S.HALTED  # a new failure still counts


def test_operator_rollback_reverts_every_device_that_got_the_release() -> None:
    sim = Sim(spec(), fleet_of(10))
    run_waves(sim, 1)
    sim.record = machine.command(sim.record, "rollback", "dave", sim.now)
    sim.publish()
    assert sim.record.state == S.ROLLED_BACK
    touched = sim.wave(0) + sim.wave(1)
    assert {sim.record.devices[d].state for d in touched} == {DeviceState.REVERTED}
    assert sim.states(2) == {DeviceState.PLANNED}
    assert sorted(d for d, r in sim.published if r == OLD) == sorted(touched)


def test_abort_stops_without_touching_devices() -> None:
    sim = Sim(spec(), fleet_of(10))
    sim.tick()
    sim.record = machine.command(sim.record, "abort", "erin", sim.now)
    assert sim.tick(advance_s=999).state == S.ABORTED
    assert len(sim.published) == 1 and sim.states(1) == {DeviceState.PLANNED}


@pytest.mark.parametrize(
    ("state_after", "command"),
    [("completed", "resume"), ("completed", "rollback"), ("completed", "pause"), ("pending", "rollback"),
     ("running", "resume"), ("running", "explode")],
)
def test_commands_the_table_does_not_allow_are_refused(state_after: str, command: str) -> None:
    sim = Sim(spec((WaveSpec(count=1, soak_s=0),)), fleet_of(1))
    if state_after != "pending":
        sim.tick()
    if state_after == "completed":
        sim.succeed(sim.wave(0))
        sim.tick()
    assert sim.record.state.value == state_after
    with pytest.raises(InvalidCommand):
        machine.command(sim.record, command, "mallory", sim.now)


def test_devices_joining_the_group_during_the_last_wave_are_assigned() -> None:
    fleet = fleet_of(4)
    sim = Sim(spec((WaveSpec(count=1, soak_s=10), WaveSpec(percent=100, soak_s=10))), fleet)
    sim.tick()
    sim.fleet["dev-new"] = fleet_of(1, tag="lab")["dev-000"].__class__("dev-new", tags=frozenset({"lab"}),
                                                                      active_release=OLD)
    sim.tick()
    assert sim.record.devices["dev-new"].state == DeviceState.PLANNED and sim.record.devices["dev-new"].wave == 1
    sim.succeed(sim.wave(0))
    sim.tick()
    sim.tick(advance_s=10)
    assert sim.record.devices["dev-new"].state == DeviceState.ASSIGNED
    sim.fleet["dev-late"] = sim.fleet["dev-new"].__class__("dev-late", tags=frozenset({"lab"}))
    sim.tick()
    assert sim.record.devices["dev-late"].state == DeviceState.ASSIGNED
    assert ("dev-late", NEW) in sim.published


def test_records_round_trip_through_json_mid_rollout() -> None:
    sim = Sim(spec(auto_rollback=True), fleet_of(12))
    run_waves(sim, 1)
    sim.report(sim.wave(1)[0], "gate_failed", {"accuracy": 0.1})
    sim.tick()
    assert record_from_json(record_to_json(sim.record)) == sim.record


@pytest.mark.parametrize(
    ("state", "active_version", "last_error", "status_version_delta", "expected"),
    [
        ("IDLE", "2", None, 0, DeviceState.SUCCEEDED),
        ("idle", "2", None, 0, DeviceState.SUCCEEDED),
        ("IDLE", "1", "gate_failed: accuracy_below_min", 0, DeviceState.FAILED),
        ("PROBATION", "2", None, 0, DeviceState.INSTALLING),
        ("IDLE", "1", None, 0, DeviceState.ASSIGNED),       # idle on the old release without error: no claim
        ("IDLE", "2", None, -1, DeviceState.ASSIGNED),      # about an older assignment
    ],
)
def test_retained_status_lets_a_restarted_controller_catch_up(
        state: str, active_version: str, last_error: str | None, status_version_delta: int,
        expected: DeviceState) -> None:
    from agent import wire

    sim = Sim(spec(), fleet_of(3))
    sim.tick()
    canary = sim.wave(0)[0]
    version = sim.record.devices[canary].assignment_version
    assert version is not None
    status = wire.Status(canary, "ab" * 8, 9, sim.now, state, wire.ActiveModel("digits", active_version, "v", "a"),
                         version + status_version_delta, "r1", last_error)
    sim.record = machine.apply_status(sim.record, status, sim.now)
    assert sim.record.devices[canary].state == expected
