"""Turn what devices report into per-device outcomes, and outcomes into a wave verdict. Pure.

A device's own gate and probation only protect that device against *its* budgets. A rollout also
holds the release to the fleet's bar: a device that passed its gate with accuracy 0.80 when the rollout
demands 0.95, or whose probation shows a 3× latency regression, counts as a `regressed` failure even
though it committed. So the ML figures in gate and probation events are checked here against the
rollout's `HealthPolicy`.

Event `details` keys read here (part of the agent → controller contract; never renamed):

| key                        | from event                           | compared with                  |
|----------------------------|--------------------------------------|--------------------------------|
| `accuracy`                 | gate_passed, gate_failed             | `min_accuracy`                 |
| `agreement`                | gate_passed, probation_*, committed  | `min_agreement`                |
| `latency_regression_ratio` | gate_passed                          | `max_latency_regression_ratio` |
| `error_rate`               | probation_*, committed               | `max_error_rate`               |
| `latency_p99_ratio`        | probation_*, committed               | `max_latency_p99_ratio`        |
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum

from agent.wire import DetailValue
from controller.rollouts.plan import HealthPolicy


class DeviceState(str, Enum):
    """Per-device progress within one rollout. Values are persisted; never rename."""

    PLANNED = "planned"  # in a wave that has not started
    ASSIGNING = "assigning"  # intent persisted, assignment not yet confirmed published
    ASSIGNED = "assigned"  # published; waiting for the device
    INSTALLING = "installing"  # the device reported progress
    SUCCEEDED = "succeeded"  # committed after probation, within the rollout's ML limits
    FAILED = "failed"  # gate failure, probation rollback, install error, rejection or regression
    TIMED_OUT = "timed_out"  # online but no outcome within device_timeout_s
    REVERTING = "reverting"  # rollback assignment intent persisted
    REVERTED = "reverted"  # rollback assignment published

    @property
    def reported(self) -> bool:
        return self in (DeviceState.SUCCEEDED, DeviceState.FAILED, DeviceState.TIMED_OUT)

    @property
    def failure(self) -> bool:
        return self in (DeviceState.FAILED, DeviceState.TIMED_OUT)


_FAILURE_EVENTS = {
    "gate_failed": "gate_failed",
    "probation_failed": "probation_failed",
    "rolled_back": "probation_rollback",
    "failed": "install_failed",
    "download_failed": "download_failed",
    "assignment_rejected": "assignment_rejected",
}
_PROGRESS_EVENTS = {"assignment_received", "download_started", "gate_passed", "activated", "probation_passed"}


@dataclass(frozen=True)
class Outcome:
    state: DeviceState
    reason: str | None = None


def classify(kind: str, details: Mapping[str, DetailValue], policy: HealthPolicy,
             reason: str | None = None) -> Outcome | None:
    """The outcome one event implies, or None when it says nothing about progress."""
    if kind in _FAILURE_EVENTS:
        code = _FAILURE_EVENTS[kind]
        return Outcome(DeviceState.FAILED, f"{code}: {reason}" if reason else code)
    regression = ml_regression(details, policy)
    if regression is not None:
        return Outcome(DeviceState.FAILED, f"regressed: {regression}")
    if kind == "committed":
        return Outcome(DeviceState.SUCCEEDED)
    if kind in _PROGRESS_EVENTS:
        return Outcome(DeviceState.INSTALLING)
    return None


def ml_regression(details: Mapping[str, DetailValue], policy: HealthPolicy) -> str | None:
    """The first rollout ML limit the reported figures break, as a readable reason; None if none."""
    checks: list[tuple[str, float | None, bool]] = [
        ("accuracy", policy.min_accuracy, True),
        ("agreement", policy.min_agreement, True),
        ("latency_regression_ratio", policy.max_latency_regression_ratio, False),
        ("error_rate", policy.max_error_rate, False),
        ("latency_p99_ratio", policy.max_latency_p99_ratio, False),
    ]
    for key, limit, is_minimum in checks:
        value = details.get(key)
        if limit is None or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if (is_minimum and value < limit) or (not is_minimum and value > limit):
            word = "below minimum" if is_minimum else "above maximum"
            return f"{key} {value:g} {word} {limit:g}"
    return None


@dataclass(frozen=True)
class WaveHealth:
    size: int
    succeeded: int
    failed: int
    timed_out: int
    waiting_online: int  # assigned, online, no outcome yet
    waiting_offline: int  # assigned but offline: they catch up later from the retained assignment
    allowed_failures: int
    required_reports: int

    @property
    def failures(self) -> int:
        return self.failed + self.timed_out

    @property
    def reported(self) -> int:
        return self.succeeded + self.failures

    @property
    def breached(self) -> bool:
        return self.failures > self.allowed_failures

    @property
    def settled(self) -> bool:
        """Every online device has an outcome and enough devices reported to judge the wave."""
        return self.waiting_online == 0 and self.reported >= self.required_reports


def wave_health(states: Mapping[str, DeviceState], online: Mapping[str, bool], policy: HealthPolicy,
                accepted_failures: int = 0) -> WaveHealth:
    """Aggregate one wave; `accepted_failures` were waved through by an operator's resume."""
    succeeded = failed = timed_out = waiting_online = waiting_offline = 0
    for device_id, state in states.items():
        if state == DeviceState.SUCCEEDED:
            succeeded += 1
        elif state == DeviceState.FAILED:
            failed += 1
        elif state == DeviceState.TIMED_OUT:
            timed_out += 1
        elif state in (DeviceState.ASSIGNING, DeviceState.ASSIGNED, DeviceState.INSTALLING):
            if online.get(device_id, False):
                waiting_online += 1
            else:
                waiting_offline += 1
    size = len(states)
    return WaveHealth(
        size=size,
        succeeded=succeeded,
        failed=failed,
        timed_out=timed_out,
        waiting_online=waiting_online,
        waiting_offline=waiting_offline,
        allowed_failures=policy.allowed_failures(size) + accepted_failures,
        required_reports=policy.required_reports(size),
    )
