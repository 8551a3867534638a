"""A small in-memory driver for the pure rollout machine: a fleet, a clock, and device reports."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from agent import wire
from controller.rollouts import machine
from controller.rollouts.plan import DeviceInfo, HealthPolicy, RolloutSpec, Selector, WaveSpec
from controller.rollouts.records import RolloutRecord, new_rollout
from controller.rollouts.signals import DeviceState
from manifests.assignment import ReleaseRef

OLD = ReleaseRef("digits", "1")
NEW = ReleaseRef("digits", "2")
STREAM = "ab" * 8


def fleet_of(n: int, *, offline: set[int] = frozenset(), tag: str = "lab") -> dict[str, DeviceInfo]:  # type: ignore[assignment]
    return {
        f"dev-{i:03d}": DeviceInfo(f"dev-{i:03d}", online=i not in offline, tags=frozenset({tag}),
                                   hardware_class="x86", active_release=OLD)
        for i in range(n)
    }


def spec(waves: tuple[WaveSpec, ...] | None = None, **policy: object) -> RolloutSpec:
    return RolloutSpec(
        release=NEW,
        selector=Selector(tags=frozenset({"lab"})),
        waves=waves or (WaveSpec(count=1, soak_s=60), WaveSpec(percent=50, soak_s=60), WaveSpec(percent=100, soak_s=60)),
        policy=HealthPolicy(**policy),  # type: ignore[arg-type]
    )


class Sim:
    def __init__(self, rollout_spec: RolloutSpec, fleet: dict[str, DeviceInfo], rollout_id: str = "r1") -> None:
        self.fleet = fleet
        self.now = 1000.0
        self.record: RolloutRecord = new_rollout(rollout_id, rollout_spec, list(fleet.values()), self.now, "alice")
        self.published: list[tuple[str, ReleaseRef]] = []
        self._version = 100
        self.seq = 0

    def tick(self, advance_s: float = 0.0) -> RolloutRecord:
        self.now += advance_s
        self.record = machine.tick(self.record, self.fleet, self.now)
        self.publish()
        return self.record

    def publish(self) -> None:
        """What the engine does after saving: publish every pending (revert) assignment."""
        for device_id in self.record.needs_assignment():
            self._version += 1
            self.published.append((device_id, self.record.spec.release))
            self.record = machine.confirm_published(self.record, device_id, self._version, self.now)
        for device_id in self.record.needs_revert():
            self._version += 1
            release = self.record.devices[device_id].previous_release
            assert release is not None
            self.published.append((device_id, release))
            self.record = machine.confirm_published(self.record, device_id, self._version, self.now, revert=True)

    def report(self, device_id: str, kind: str, details: Mapping[str, wire.DetailValue] | None = None,
               *, version: int | None = None, rollout_id: str | None = None, reason: str | None = None) -> None:
        progress = self.record.devices[device_id]
        self.seq += 1
        event = wire.Event(device_id, STREAM, self.seq, self.now, kind,
                           version if version is not None else progress.assignment_version,
                           rollout_id or self.record.rollout_id, NEW.model, NEW.version, reason, dict(details or {}))
        self.record = machine.apply_event(self.record, event, self.now)

    def succeed(self, device_ids: list[str]) -> None:
        for device_id in device_ids:
            self.report(device_id, "assignment_received")
            self.report(device_id, "gate_passed", {"accuracy": 0.97, "latency_regression_ratio": 1.02})
            self.report(device_id, "committed", {"error_rate": 0.0, "latency_p99_ratio": 1.05})

    def wave(self, index: int) -> list[str]:
        return sorted(self.record.wave_devices(index))

    def states(self, index: int) -> set[DeviceState]:
        return {p.state for p in self.record.wave_devices(index).values()}

    def chain(self) -> list[str]:
        return [f"{t.trigger}->{t.to_state.value}" for t in self.record.history[1:]]

    def set_online(self, device_id: str, online: bool) -> None:
        self.fleet[device_id] = replace(self.fleet[device_id], online=online)
