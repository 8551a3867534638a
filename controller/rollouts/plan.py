"""What a rollout is: a release × a target selector × a plan of waves, and how devices fall into waves.

Everything here is pure data and pure functions: no clock, no database, no broker.

Waves are *cumulative* targets over the selected devices, as operators write them: `1 → 10 % → 50 % →
100 %` means the first wave takes one device, the second brings the total to 10 %, and so on. The last
wave always takes whatever is left, so a plan can never strand devices. Devices are ordered online
first (a canary that is offline would only stall the rollout), then by a hash of (rollout id, device
id): reproducible after a controller restart, yet a different spread for every rollout so the same
unlucky device is not always the canary.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from controller.rollouts.device_policies import PolicyOverrides
from controller.rollouts.errors import PlanError
from manifests.assignment import ReleaseRef


@dataclass(frozen=True)
class Selector:
    """Devices a rollout targets: every tag must match, any listed hardware class, plus explicit ids.

    An empty selector matches no device (a rollout to "everything" must say so with a tag).
    """

    tags: frozenset[str] = frozenset()
    hardware_classes: frozenset[str] = frozenset()
    device_ids: frozenset[str] = frozenset()

    def matches(self, device: DeviceInfo) -> bool:
        if device.device_id in self.device_ids:
            return True
        if not self.tags and not self.hardware_classes:
            return False
        if not self.tags <= device.tags:
            return False
        return not self.hardware_classes or device.hardware_class in self.hardware_classes


@dataclass(frozen=True)
class DeviceInfo:
    """What the rollout engine needs to know about one enrolled device."""

    device_id: str
    online: bool = True
    tags: frozenset[str] = frozenset()
    hardware_class: str | None = None
    active_release: ReleaseRef | None = None


@dataclass(frozen=True)
class WaveSpec:
    """One wave: its cumulative target (a count or a percentage) and how long it must look healthy."""

    count: int | None = None
    percent: float | None = None
    soak_s: float = 600.0

    def __post_init__(self) -> None:
        if (self.count is None) == (self.percent is None):
            raise PlanError("a wave needs exactly one of count or percent")
        if self.count is not None and self.count < 1:
            raise PlanError(f"wave count must be at least 1, got {self.count}")
        if self.percent is not None and not 0 < self.percent <= 100:
            raise PlanError(f"wave percent must be in (0, 100], got {self.percent}")
        if not 0 <= self.soak_s <= 30 * 86400:
            raise PlanError(f"soak_s must be between 0 and 30 days, got {self.soak_s}")

    def cumulative_target(self, total: int) -> int:
        if self.count is not None:
            return min(self.count, total)
        assert self.percent is not None
        return min(total, max(1, math.ceil(total * self.percent / 100.0 - 1e-9)))


@dataclass(frozen=True)
class HealthPolicy:
    """When a wave counts as failed. Install failures *and* ML signals count against the threshold.

    A wave may lose `max(max_failures, floor(max_failure_ratio × wave size))` devices; one more halts it.
    ML limits (None: not checked) apply to the figures devices report in their gate and probation
    events, and turn an otherwise successful device into a `regressed` failure.
    """

    max_failures: int = 0
    max_failure_ratio: float = 0.0
    min_reporting_ratio: float = 1.0
    device_timeout_s: float = 1800.0
    min_accuracy: float | None = None
    min_agreement: float | None = None
    max_latency_regression_ratio: float | None = None
    max_error_rate: float | None = None
    max_latency_p99_ratio: float | None = None
    auto_halt: bool = True
    auto_rollback: bool = False

    def __post_init__(self) -> None:
        if self.max_failures < 0 or not 0 <= self.max_failure_ratio <= 1:
            raise PlanError("max_failures must be >= 0 and max_failure_ratio within [0, 1]")
        if not 0 <= self.min_reporting_ratio <= 1:
            raise PlanError(f"min_reporting_ratio must be within [0, 1], got {self.min_reporting_ratio}")
        if self.device_timeout_s <= 0:
            raise PlanError(f"device_timeout_s must be positive, got {self.device_timeout_s}")
        if self.auto_rollback and not self.auto_halt:
            raise PlanError("auto_rollback needs auto_halt")

    def allowed_failures(self, wave_size: int) -> int:
        return max(self.max_failures, math.floor(self.max_failure_ratio * wave_size + 1e-9))

    def required_reports(self, wave_size: int) -> int:
        return math.ceil(self.min_reporting_ratio * wave_size - 1e-9)


@dataclass(frozen=True)
class RolloutSpec:
    release: ReleaseRef
    selector: Selector
    waves: tuple[WaveSpec, ...]
    policy: HealthPolicy = field(default_factory=HealthPolicy)
    rollback_release: ReleaseRef | None = None  # for devices whose previous release is unknown
    # A fleet rollback: `release` is one the fleet already ran (checked at creation), so its
    # assignments waive the gate's accuracy drop against the (more accurate) model devices run now.
    rollback: bool = False
    # What the operator set on top of the fleet's and the release's device policies (device_policies.py).
    device_policies: PolicyOverrides = field(default_factory=PolicyOverrides)

    def __post_init__(self) -> None:
        if not self.waves:
            raise PlanError("a rollout needs at least one wave")
        if len(self.waves) > 20:
            raise PlanError(f"at most 20 waves, got {len(self.waves)}")
        if self.rollback and "max_accuracy_drop" in self.device_policies.gate:
            raise PlanError("device_policies.gate.max_accuracy_drop cannot be set on a fleet rollback: "
                            "its assignments waive the accuracy-drop check")


def order_devices(rollout_id: str, devices: Iterable[DeviceInfo]) -> list[DeviceInfo]:
    """Online first, then a per-rollout pseudo-random but reproducible order."""

    def key(device: DeviceInfo) -> tuple[bool, str]:
        digest = hashlib.sha256(f"{rollout_id}\0{device.device_id}".encode()).hexdigest()
        return (not device.online, digest)

    return sorted(devices, key=key)


def partition(rollout_id: str, devices: Sequence[DeviceInfo], waves: Sequence[WaveSpec]) -> list[list[str]]:
    """Device ids per wave; every device lands in exactly one wave, waves may be empty."""
    ordered = [d.device_id for d in order_devices(rollout_id, devices)]
    if len({*ordered}) != len(ordered):
        raise PlanError("device list has duplicates")
    total = len(ordered)
    out: list[list[str]] = []
    start = 0
    for index, wave in enumerate(waves):
        end = total if index == len(waves) - 1 else max(start, wave.cumulative_target(total))
        out.append(ordered[start:end])
        start = end
    return out
