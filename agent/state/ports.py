"""The update driver's ports: what it needs from the rest of the agent, as small Protocols.

The driver (`agent.engine`) depends only on these; tests drive it with fakes of them, and the
inference server, the MQTT client and the real clock implement them in production. Everything here
is data or an interface; `SystemClock` and `LogReporter` are the trivial production defaults.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

from agent.slots import ModelRef
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
