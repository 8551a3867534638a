"""The update state machine as data: states, events, one transition table, a resume map, a status.

Nothing here touches a file, a clock or a model. The driver (`agent.engine`) performs the side
effects, persists the journal before each one and asks this module where to go next. Keeping every
transition in one table means a reviewer can check the whole life cycle of an update on one screen,
and a test can check that every state has an answer after a crash (Mender's `state_machine.cpp`).

    IDLE ─assign─▶ VERIFY ─ok─▶ DOWNLOAD ─ok─▶ GATE ─ok─▶ ACTIVATE ─ok─▶ PROBATION ─ok─▶ COMMIT ─ok─▶ CLEANUP ─ok─▶ IDLE
                     │  └noop─▶ CLEANUP ▲         │ └next─▶ DOWNLOAD         │               │              │
                     └fail─▶ FAILURE ◀──┴─fail────┘                          └──fail──▶ ROLLBACK ◀─fail─────┘
                             FAILURE ─ok/fail─▶ CLEANUP ─ok/fail─▶ IDLE      ROLLBACK ─ok/fail─▶ FAILURE

Deliberately not here: what a state does (the driver) and how the journal is stored (`journal`).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass


class State(str, enum.Enum):
    IDLE = "IDLE"
    VERIFY = "VERIFY"
    DOWNLOAD = "DOWNLOAD"
    GATE = "GATE"
    ACTIVATE = "ACTIVATE"
    PROBATION = "PROBATION"
    COMMIT = "COMMIT"
    ROLLBACK = "ROLLBACK"
    FAILURE = "FAILURE"
    CLEANUP = "CLEANUP"


class Event(str, enum.Enum):
    ASSIGN = "assign"  # a verified plan arrived
    OK = "ok"  # the state's work succeeded
    FAIL = "fail"  # the state's work failed (an error, a timeout, a hang cut short)
    NOOP = "noop"  # the assigned release is already the committed one
    NEXT = "next"  # the gate rejected this candidate and another one is left


class TransitionError(Exception):
    """An event that the table does not allow in this state: a bug in the driver, never retryable."""


TRANSITIONS: Mapping[tuple[State, Event], State] = {
    (State.IDLE, Event.ASSIGN): State.VERIFY,
    (State.VERIFY, Event.OK): State.DOWNLOAD,
    (State.VERIFY, Event.NOOP): State.CLEANUP,
    (State.VERIFY, Event.FAIL): State.FAILURE,
    (State.DOWNLOAD, Event.OK): State.GATE,
    (State.DOWNLOAD, Event.FAIL): State.FAILURE,
    (State.GATE, Event.OK): State.ACTIVATE,
    (State.GATE, Event.NEXT): State.DOWNLOAD,
    (State.GATE, Event.FAIL): State.FAILURE,
    (State.ACTIVATE, Event.OK): State.PROBATION,
    (State.ACTIVATE, Event.FAIL): State.ROLLBACK,
    (State.PROBATION, Event.OK): State.COMMIT,
    (State.PROBATION, Event.FAIL): State.ROLLBACK,
    (State.COMMIT, Event.OK): State.CLEANUP,
    (State.COMMIT, Event.FAIL): State.ROLLBACK,
    (State.ROLLBACK, Event.OK): State.FAILURE,
    (State.ROLLBACK, Event.FAIL): State.FAILURE,
    (State.FAILURE, Event.OK): State.CLEANUP,
    (State.FAILURE, Event.FAIL): State.CLEANUP,
    (State.CLEANUP, Event.OK): State.IDLE,
    (State.CLEANUP, Event.FAIL): State.IDLE,  # leftovers are collected by the next cleanup
}


def transition(state: State, event: Event) -> State:
    """The next state, or TransitionError when the table has no such edge."""
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        raise TransitionError(f"no transition from {state.value} on {event.value!r}") from None


# Where to continue after a crash in a state. Before ACTIVATE nothing visible changed, so the update
# starts over (the stager resumes its partial file); once the pointers may have moved, the only safe
# continuation is back to the committed model; the bookkeeping states are idempotent and run again.
RESUME: Mapping[State, State] = {
    State.IDLE: State.IDLE,
    State.VERIFY: State.VERIFY,
    State.DOWNLOAD: State.VERIFY,
    State.GATE: State.VERIFY,
    State.ACTIVATE: State.ROLLBACK,
    State.PROBATION: State.ROLLBACK,
    State.COMMIT: State.COMMIT,
    State.ROLLBACK: State.ROLLBACK,
    State.FAILURE: State.FAILURE,
    State.CLEANUP: State.CLEANUP,
}

# States whose retry after a crash counts against the store limit: a model that crashes the agent
# during probation would otherwise loop forever.
UPDATE_STATES = frozenset({State.VERIFY, State.DOWNLOAD, State.GATE, State.ACTIVATE, State.PROBATION})


def resume_state(state: State, store_count: int, max_store_count: int) -> State:
    """Where a restarted driver continues. Past the store limit an update stops trying: roll back
    if anything may have been activated, otherwise fail."""
    if store_count > max_store_count and state in UPDATE_STATES:
        return State.ROLLBACK if state in (State.ACTIVATE, State.PROBATION) else State.FAILURE
    return RESUME[state]


@dataclass(frozen=True)
class Flags:
    """Facts set along the way; the final status is computed from these, never from the path."""

    verified: bool = False
    downloaded: bool = False
    gate_passed: bool = False
    activated: bool = False
    probation_passed: bool = False
    committed: bool = False
    rolled_back: bool = False
    rollback_failed: bool = False
    already_active: bool = False
    failed: bool = False


class Status(str, enum.Enum):
    SUCCESS = "success"
    ALREADY_ACTIVE = "already_active"
    FAILURE = "failure"
    ROLLED_BACK = "rolled_back"
    ROLLBACK_FAILED = "rollback_failed"
    IN_PROGRESS = "in_progress"


def final_status(flags: Flags) -> Status:
    if flags.committed:
        return Status.SUCCESS
    if flags.already_active:
        return Status.ALREADY_ACTIVE
    if flags.rollback_failed:
        return Status.ROLLBACK_FAILED
    if flags.rolled_back:
        return Status.ROLLED_BACK
    if flags.failed:
        return Status.FAILURE
    return Status.IN_PROGRESS
