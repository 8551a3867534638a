"""Table-driven tests of the journaled driver: expected state chains and final status for normal
updates, gate fallback, download failure, and a failure, crash or hang injected into every state.

The stager, slot store and journal are real (targets come from a folder over file://); the gate,
activator and probation are fakes of the engine's own ports.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from agent.state import RESUME, TRANSITIONS, Event, State, Status, resume_state, transition
from tests.agent.fakes import (
    EventLog,
    Injector,
    RecordingActivator,
    Repo,
    ScriptedGate,
    ScriptedProbation,
    SimulatedCrash,
    make_engine,
)

V1 = "models/digits/1/ort-fp32.onnx"
V2_INT8 = "models/digits/2/ort-int8.onnx"
V2_FP32 = "models/digits/2/ort-fp32.onnx"
UPDATE = ["VERIFY", "DOWNLOAD", "GATE", "ACTIVATE", "PROBATION", "COMMIT", "CLEANUP", "IDLE"]
FAIL_TAIL = ["FAILURE", "CLEANUP", "IDLE"]
ROLLBACK_TAIL = ["ROLLBACK", "FAILURE", "CLEANUP", "IDLE"]


def test_every_state_has_a_resume_entry_and_every_edge_lands_on_a_state() -> None:
    assert set(RESUME) == set(State)
    for (state, event), nxt in TRANSITIONS.items():
        assert transition(state, event) is nxt
    # every non-idle state can make progress on OK or FAIL, so no update can get stuck in the table
    for state in State:
        if state is not State.IDLE:
            assert any((state, e) in TRANSITIONS for e in (Event.OK, Event.FAIL)), state


def test_resume_map_matches_the_design() -> None:
    for state in (State.VERIFY, State.DOWNLOAD, State.GATE):
        assert resume_state(state, 1, 40) is State.VERIFY
    for state in (State.ACTIVATE, State.PROBATION):
        assert resume_state(state, 1, 40) is State.ROLLBACK
    for state in (State.COMMIT, State.FAILURE, State.CLEANUP, State.ROLLBACK):
        assert resume_state(state, 1, 40) is state
    assert resume_state(State.GATE, 41, 40) is State.FAILURE
    assert resume_state(State.PROBATION, 41, 40) is State.ROLLBACK


@dataclass
class World:
    root: Path
    repo: Repo
    events: EventLog = field(default_factory=EventLog)


@pytest.fixture
def world(tmp_path: Path) -> World:
    """A device that committed release 1; release 2 (int8 ranked first, fp32 second) is published."""
    repo = Repo(tmp_path / "repo")
    w = World(tmp_path / "device", repo)
    outcome = make_engine(w.root, repo).apply(repo.plan(repo.release("digits", "1", ["ort-fp32.onnx"])))
    assert outcome.status is Status.SUCCESS and outcome.current is not None and outcome.current.target == V1
    return w


def release2(w: World) -> object:
    targets = w.repo.release("digits", "2", ["ort-int8.onnx", "ort-fp32.onnx"],
                             **{"ort-int8.onnx": {"precision": "int8"}})
    return w.repo.plan(targets)


def assert_clean(w: World, serving: str) -> None:
    """Invariants after any update: one served, verified model; no previous; nothing staged or orphaned."""
    from agent.slots import FileSlotStore

    slots = FileSlotStore(w.root)
    current = slots.current()
    assert current is not None and current.target == serving
    assert slots.verify(current)
    assert slots.previous() is None
    assert slots.slots() == (current.sha256,)
    assert list((w.root / "staging").glob("*")) == []
    assert json.loads((w.root / "journal.json").read_text())["state"] == "IDLE"


CASES = {
    # name: (gate rejects, activator fails, probation fails, expected chain, status, served afterwards)
    "success": ({}, False, None, UPDATE, Status.SUCCESS, V2_INT8),
    "gate_rejects_first_falls_back": ({V2_INT8: "accuracy_below_min"}, False, None,
                                      ["VERIFY", "DOWNLOAD", "GATE", "DOWNLOAD", "GATE", "ACTIVATE", "PROBATION",
                                       "COMMIT", "CLEANUP", "IDLE"], Status.SUCCESS, V2_FP32),
    "gate_rejects_all": ({V2_INT8: "accuracy_below_min", V2_FP32: "latency_regression"}, False, None,
                         ["VERIFY", "DOWNLOAD", "GATE", "DOWNLOAD", "GATE", *FAIL_TAIL], Status.FAILURE, V1),
    "activation_fails": ({}, True, None, ["VERIFY", "DOWNLOAD", "GATE", "ACTIVATE", *ROLLBACK_TAIL],
                         Status.ROLLED_BACK, V1),
    "probation_fails": ({}, False, "error rate 0.2 > 0.01", [*UPDATE[:5], *ROLLBACK_TAIL], Status.ROLLED_BACK, V1),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_update_paths(world: World, name: str) -> None:
    rejects, fail_activate, probation_reason, chain, status, serving = CASES[name]
    activator = RecordingActivator(fail_activate=fail_activate)
    engine = make_engine(world.root, world.repo, ScriptedGate(rejects), activator,
                         ScriptedProbation(probation_reason), world.events)
    outcome = engine.apply(release2(world))
    assert world.events.states() == chain
    assert outcome.status is status
    assert world.events.events[-1].status == status.value
    assert_clean(world, serving)
    if status is Status.ROLLED_BACK:
        assert activator.calls[-1] == f"rollback:{V1}"
    seqs = [e.seq for e in world.events.events]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)


def test_download_failure_keeps_the_old_model(world: World) -> None:
    plan = release2(world)
    for t in plan.targets:  # the int8 variant's bytes vanish from the repository
        if t.name == V2_INT8:
            (world.repo.root / t.store_key).unlink()
    outcome = make_engine(world.root, world.repo, events=world.events).apply(plan)
    assert world.events.states() == ["VERIFY", "DOWNLOAD", *FAIL_TAIL]
    assert outcome.status is Status.FAILURE and outcome.reason is not None
    assert outcome.reason.startswith("download_failed: source_error")
    assert_clean(world, V1)


def test_rollback_failure_is_reported_and_the_new_model_keeps_serving(world: World) -> None:
    engine = make_engine(world.root, world.repo, activator=RecordingActivator(fail_rollback=True),
                         probation=ScriptedProbation("latency p99 3x"), events=world.events)
    outcome = engine.apply(release2(world))
    assert world.events.states() == [*UPDATE[:5], *ROLLBACK_TAIL]
    assert outcome.status is Status.ROLLBACK_FAILED
    assert outcome.current is not None and outcome.current.target == V2_INT8


# Injected into the step that enters each state: expected chain from VERIFY on, status, served model.
# A failure in ROLLBACK needs a rollback to happen, so those cases also fail probation.
INJECTED = {
    "VERIFY": (["VERIFY", *FAIL_TAIL], Status.FAILURE, V1),
    "DOWNLOAD": (["VERIFY", "DOWNLOAD", *FAIL_TAIL], Status.FAILURE, V1),
    "GATE": (["VERIFY", "DOWNLOAD", "GATE", *FAIL_TAIL], Status.FAILURE, V1),
    "ACTIVATE": ([*UPDATE[:4], *ROLLBACK_TAIL], Status.ROLLED_BACK, V1),
    "PROBATION": ([*UPDATE[:5], *ROLLBACK_TAIL], Status.ROLLED_BACK, V1),
    "COMMIT": ([*UPDATE[:6], *ROLLBACK_TAIL], Status.ROLLED_BACK, V1),
    "ROLLBACK": ([*UPDATE[:5], *ROLLBACK_TAIL], Status.ROLLBACK_FAILED, V2_INT8),
    "FAILURE": ([*UPDATE[:5], *ROLLBACK_TAIL], Status.ROLLED_BACK, V1),
    "CLEANUP": (UPDATE, Status.SUCCESS, V2_INT8),
}


@pytest.mark.parametrize("mode", ["fail", "hang"])
@pytest.mark.parametrize("state", sorted(INJECTED))
def test_failure_or_hang_injected_in_every_state(world: World, state: str, mode: str) -> None:
    chain, status, serving = INJECTED[state]
    hook = Injector(f"enter:{state}", mode)
    timeouts = {s: 0.5 for s in State} if mode == "hang" else None
    probation = ScriptedProbation("probation failed" if state in ("ROLLBACK", "FAILURE") else None)
    engine = make_engine(world.root, world.repo, probation=probation, events=world.events, hook=hook,
                         timeouts=timeouts)
    try:
        outcome = engine.apply(release2(world))
    finally:
        hook.release.set()
    assert hook.fired
    assert world.events.states() == chain
    assert outcome.status is status
    assert outcome.current is not None and outcome.current.target == serving
    if mode == "hang":
        assert any("did not finish" in (e.reason or "") for e in world.events.events)
    if state not in ("ROLLBACK", "CLEANUP"):
        assert_clean(world, serving)


# After a crash in each state: the chain the restarted driver runs, the status, the served model.
CRASHED = {
    "VERIFY": (UPDATE, Status.SUCCESS, V2_INT8),
    "DOWNLOAD": (UPDATE, Status.SUCCESS, V2_INT8),
    "GATE": (UPDATE, Status.SUCCESS, V2_INT8),
    "ACTIVATE": (ROLLBACK_TAIL, Status.ROLLED_BACK, V1),
    "PROBATION": (ROLLBACK_TAIL, Status.ROLLED_BACK, V1),
    "COMMIT": (["COMMIT", "CLEANUP", "IDLE"], Status.SUCCESS, V2_INT8),
    "ROLLBACK": (ROLLBACK_TAIL, Status.ROLLED_BACK, V1),
    "FAILURE": (FAIL_TAIL, Status.ROLLED_BACK, V1),
    "CLEANUP": (["CLEANUP", "IDLE"], Status.SUCCESS, V2_INT8),
}


@pytest.mark.parametrize("state", sorted(CRASHED))
def test_crash_in_every_state_then_restart(world: World, state: str) -> None:
    chain, status, serving = CRASHED[state]
    probation = ScriptedProbation("probation failed" if state in ("ROLLBACK", "FAILURE") else None)
    first = make_engine(world.root, world.repo, probation=probation, hook=Injector(f"enter:{state}", "crash"))
    with pytest.raises(SimulatedCrash):
        first.apply(release2(world))
    events = EventLog()
    activator = RecordingActivator()
    restarted = make_engine(world.root, world.repo, activator=activator, probation=probation, events=events)
    outcome = restarted.recover()
    assert outcome is not None and outcome.status is status
    assert events.states()[0] == chain[0] and events.events[0].reason.startswith("resumed after a restart")
    assert events.states() == chain
    assert_clean(world, serving)
    if "ROLLBACK" in chain:
        assert activator.calls[-1] == f"rollback:{V1}"


def test_restart_loop_is_broken_by_the_store_counter(world: World) -> None:
    plan = release2(world)
    hook_steps = 0
    crashes = 0
    engine = make_engine(world.root, world.repo, hook=Injector("enter:GATE", "crash"), max_store_count=12)
    with pytest.raises(SimulatedCrash):
        engine.apply(plan)
    outcome = None
    while outcome is None and crashes < 20:
        engine = make_engine(world.root, world.repo, hook=Injector("enter:GATE", "crash"), max_store_count=12)
        try:
            outcome = engine.recover()
        except SimulatedCrash:
            crashes += 1
        hook_steps += 1
    assert outcome is not None, "the driver kept crashing in GATE past its store limit"
    assert 1 <= crashes < 20
    assert outcome.status is Status.FAILURE and outcome.reason is not None
    assert outcome.reason.startswith("restart_loop")
    assert_clean(world, V1)


def test_same_release_again_is_a_noop_and_same_assignment_twice_does_nothing(world: World) -> None:
    engine = make_engine(world.root, world.repo, events=world.events)
    plan = world.repo.plan(world.repo.release("digits", "1", ["ort-fp32.onnx"]))
    assert engine.apply(plan).status is Status.ALREADY_ACTIVE
    assert world.events.states() == ["VERIFY", "CLEANUP", "IDLE"]
    assert engine.apply(plan).status is Status.ALREADY_ACTIVE
    assert len(world.events.events) == 3
    assert_clean(world, V1)


def test_expired_assignment_and_incompatible_variants_fail_with_reasons(world: World) -> None:
    from datetime import timedelta

    engine = make_engine(world.root, world.repo)
    targets = world.repo.release("digits", "3", ["trt-fp16.plan"], **{"trt-fp16.plan": {"runtime": "tensorrt"}})
    outcome = engine.apply(world.repo.plan(targets))
    assert outcome.status is Status.FAILURE and outcome.reason is not None
    assert "tensorrt: no NVIDIA GPU" in outcome.reason
    expired = world.repo.plan(world.repo.release("digits", "4", ["ort-fp32.onnx"]), expires_in=timedelta(seconds=30))
    import dataclasses

    stale = dataclasses.replace(expired.assignment, expires_at=expired.assignment.issued_at + timedelta(seconds=1))
    outcome = engine.apply(dataclasses.replace(expired, assignment=stale))
    assert outcome.status is Status.FAILURE and outcome.reason is not None and outcome.reason.startswith("expired")
    assert_clean(world, V1)


def test_garbage_journal_is_survived_and_the_served_model_kept(world: World) -> None:
    (world.root / "journal.json").write_bytes(b"\x00garbage{")
    engine = make_engine(world.root, world.repo)
    assert engine.recover() is None
    assert engine.apply(release2(world)).status is Status.SUCCESS
    assert_clean(world, V2_INT8)


def test_corrupted_current_slot_falls_back_to_previous_on_restart(world: World) -> None:
    from agent.slots import FileSlotStore

    first = make_engine(world.root, world.repo, hook=Injector("enter:PROBATION", "crash"))
    with pytest.raises(SimulatedCrash):
        first.apply(release2(world))
    slots = FileSlotStore(world.root)
    current = slots.current()
    assert current is not None and current.target == V2_INT8
    slots.path(current).write_bytes(b"bit rot")
    outcome = make_engine(world.root, world.repo).recover()
    assert outcome is not None and outcome.status is Status.ROLLED_BACK
    assert_clean(world, V1)
