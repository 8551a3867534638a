"""The persisted rollout record: one frozen value holding everything needed to carry on after a restart.

The rollout state machine (`machine.py`) maps a record to the next record; the engine persists each
record *before* acting on it. Pending work is not a separate queue but a property of the record: devices
in `assigning` still need their assignment published, devices in `reverting` their rollback. After a
crash the engine simply finds them again, so no action is lost and none needs a second bookkeeping.
`revision` increases with every save and lets the store refuse a stale writer (two replicas, or an
operator command racing a tick).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import Enum
from types import MappingProxyType

from controller.rollouts.plan import DeviceInfo, RolloutSpec, partition
from controller.rollouts.signals import DeviceState
from manifests.assignment import ReleaseRef


class RolloutState(str, Enum):
    """Values are persisted and shown by the API; never rename."""

    PENDING = "pending"
    RUNNING = "running"
    SOAKING = "soaking"
    PAUSED = "paused"
    HALTED = "halted"
    COMPLETED = "completed"
    ROLLED_BACK = "rolled_back"
    ABORTED = "aborted"

    @property
    def terminal(self) -> bool:
        return self in (RolloutState.COMPLETED, RolloutState.ROLLED_BACK, RolloutState.ABORTED)


@dataclass(frozen=True)
class DeviceProgress:
    wave: int
    state: DeviceState = DeviceState.PLANNED
    assignment_version: int | None = None
    waiting_since: float | None = None  # assignment time, reset while the device is offline
    updated_at: float | None = None
    reason: str | None = None
    previous_release: ReleaseRef | None = None
    revert_version: int | None = None


@dataclass(frozen=True)
class Transition:
    """One line of the rollout's history; operator actions carry the actor (the audit log)."""

    at: float
    from_state: RolloutState
    to_state: RolloutState
    wave: int
    trigger: str
    actor: str
    reason: str | None = None


@dataclass(frozen=True)
class RolloutRecord:
    rollout_id: str
    spec: RolloutSpec
    state: RolloutState
    created_at: float
    created_by: str
    wave: int = 0
    wave_started_at: float | None = None
    soak_started_at: float | None = None
    paused_state: RolloutState | None = None
    paused_at: float | None = None
    accepted_failures: Mapping[int, int] = field(default_factory=dict)
    devices: Mapping[str, DeviceProgress] = field(default_factory=dict)
    reason: str | None = None
    history: tuple[Transition, ...] = ()
    revision: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "devices", MappingProxyType(dict(self.devices)))
        object.__setattr__(self, "accepted_failures", MappingProxyType(dict(self.accepted_failures)))

    def wave_devices(self, wave: int) -> dict[str, DeviceProgress]:
        return {d: p for d, p in self.devices.items() if p.wave == wave}

    def with_devices(self, changes: Mapping[str, DeviceProgress]) -> RolloutRecord:
        if not changes:
            return self
        return replace(self, devices={**self.devices, **changes})

    def needs_assignment(self) -> list[str]:
        return sorted(d for d, p in self.devices.items() if p.state == DeviceState.ASSIGNING)

    def needs_revert(self) -> list[str]:
        return sorted(d for d, p in self.devices.items() if p.state == DeviceState.REVERTING)


def new_rollout(rollout_id: str, spec: RolloutSpec, devices: Sequence[DeviceInfo], now: float,
                actor: str) -> RolloutRecord:
    """A PENDING rollout with every selected device planned into its wave."""
    waves = partition(rollout_id, devices, spec.waves)
    by_id = {d.device_id: d for d in devices}
    progress = {
        device_id: DeviceProgress(wave=index, previous_release=by_id[device_id].active_release)
        for index, ids in enumerate(waves)
        for device_id in ids
    }
    created = Transition(now, RolloutState.PENDING, RolloutState.PENDING, 0, "create", actor)
    return RolloutRecord(rollout_id, spec, RolloutState.PENDING, now, actor, devices=progress,
                         history=(created,))
