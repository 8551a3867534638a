"""The update driver's ports (what it needs from the rest of the agent, as small Protocols), its
configuration and the outcome it returns.

The driver (`agent.engine`) depends only on these; tests drive it with fakes of them, and the
inference server, the MQTT client and the real clock implement them in production. Everything here
is data or an interface; `SystemClock` and `LogReporter` are the trivial production defaults.

Ports and who implements them in production:

| port       | role                                              | here                        |
|------------|---------------------------------------------------|-----------------------------|
| Reporter   | typed update events out (MQTT on a connected device) | `LogReporter`               |
| Activator  | hot-swap the served model / swap back             | the inference server        |
| Probation  | watch the new model for a window, pass or fail    | the inference server        |
| Fetcher    | bytes from a URL with an offset                   | `agent.staging.UrlFetcher`  |
| Gate       | measure + judge a candidate                       | `agent.gate.ProcessGate`    |
| SlotStore  | content-addressed models + current/previous       | `agent.slots.FileSlotStore` |
| Clock      | wall time for expiry, monotonic time, sleep       | `SystemClock`               |
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol, TypeVar

from agent.slots import ModelRef
from agent.staging import StagingConfig
from agent.state.machine import State, Status
from manifests.assignment import ProbationPolicy

log = logging.getLogger("agent.engine")


@dataclass(frozen=True)
class ActiveModel:
    """A model the Activator should serve: the pointer record plus the file in its slot."""

    ref: ModelRef
    path: Path


@dataclass(frozen=True)
class UpdateEvent:
    """One transition. `seq` grows per device across restarts, so a consumer can deduplicate."""

    seq: int
    deployment_id: str
    state: str
    previous_state: str | None
    event: str | None
    status: str
    reason: str | None = None
    detail: Mapping[str, Any] = field(default_factory=dict)


class Reporter(Protocol):
    def report(self, event: UpdateEvent) -> None: ...


class Activator(Protocol):
    def activate(self, model: ActiveModel) -> None:
        """Load and warm `model` beside the served one, then switch; raise if it cannot serve."""

    def rollback(self, model: ActiveModel | None) -> None:
        """Serve `model` (the last committed one) again; None means nothing was served before."""

    def commit(self, model: ActiveModel) -> None:
        """Probation passed: release whatever was kept loaded to make a rollback instant."""


@dataclass(frozen=True)
class ProbationResult:
    passed: bool
    reason: str | None = None
    detail: Mapping[str, Any] = field(default_factory=dict)


class Probation(Protocol):
    def watch(self, model: ActiveModel, policy: ProbationPolicy) -> ProbationResult: ...


class Clock(Protocol):
    def now(self) -> datetime: ...

    def monotonic(self) -> float: ...

    def sleep(self, seconds: float) -> None: ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(timezone.utc)

    def monotonic(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


class LogReporter:
    """Writes events to the log; the MQTT reporter replaces it on a connected device."""

    def report(self, event: UpdateEvent) -> None:
        log.info("update %s #%d %s -> %s (%s) %s", event.deployment_id, event.seq, event.previous_state,
                 event.state, event.status, event.reason or "")


class StateTimeout(Exception):
    """A state's work did not finish within its timeout (treated as a failure of that state)."""


T = TypeVar("T")


def run_with_timeout(fn: Callable[[], T], timeout_s: float, thread_name: str, message: str) -> T:
    """Run `fn` on a daemon thread; raise StateTimeout(message) if it is not done in `timeout_s`.

    The thread cannot be stopped: a port that hangs and later wakes up must not act on its own.
    """
    result: list[T] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            result.append(fn())
        except BaseException as e:  # re-raised on the caller's thread, crashes included
            failure.append(e)

    worker = threading.Thread(target=run, name=thread_name, daemon=True)
    worker.start()
    worker.join(timeout_s)
    if worker.is_alive():
        raise StateTimeout(message)
    if failure:
        raise failure[0]
    return result[0]


# DOWNLOAD and GATE have their own bounds (the stager's deadline, the gate child's timeout); these
# catch a port that hangs. A state that times out fails like any other failure of that state.
_DEFAULT_TIMEOUTS_S: Mapping[State, float] = {
    State.VERIFY: 120.0, State.DOWNLOAD: 4 * 3600.0, State.GATE: 3600.0, State.ACTIVATE: 300.0,
    State.COMMIT: 120.0, State.ROLLBACK: 300.0, State.FAILURE: 60.0, State.CLEANUP: 120.0,
}


@dataclass(frozen=True)
class EngineConfig:
    max_store_count: int = 40
    state_timeouts_s: Mapping[State, float] = field(default_factory=lambda: dict(_DEFAULT_TIMEOUTS_S))
    probation_grace_s: float = 120.0  # PROBATION times out after the policy's window plus this
    staging: StagingConfig = field(default_factory=StagingConfig)


@dataclass(frozen=True)
class UpdateOutcome:
    deployment_id: str
    status: Status
    reason: str | None
    current: ModelRef | None
    gate_reports: tuple[Mapping[str, Any], ...] = ()
