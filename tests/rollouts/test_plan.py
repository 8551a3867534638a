"""The pure planner: wave sizes, device order, selectors, validation."""

from __future__ import annotations

import pytest

from controller.rollouts.errors import PlanError
from controller.rollouts.plan import DeviceInfo, HealthPolicy, Selector, WaveSpec, partition

from .sim import fleet_of

WAVES = (WaveSpec(count=1), WaveSpec(percent=10), WaveSpec(percent=50), WaveSpec(percent=100))


@pytest.mark.parametrize(
    ("devices", "waves", "sizes"),
    [
        (20, WAVES, [1, 1, 8, 10]),
        (100, WAVES, [1, 9, 40, 50]),
        (1, WAVES, [1, 0, 0, 0]),
        (5, (WaveSpec(count=10),), [5]),
        (10, (WaveSpec(count=2), WaveSpec(percent=10)), [2, 8]),  # the last wave takes the rest
        (3, (WaveSpec(percent=1), WaveSpec(count=3)), [1, 2]),     # a percentage rounds up to one device
    ],
)
def test_cumulative_wave_sizes(devices: int, waves: tuple[WaveSpec, ...], sizes: list[int]) -> None:
    split = partition("r1", list(fleet_of(devices).values()), waves)
    assert [len(w) for w in split] == sizes
    assert sorted(d for w in split for d in w) == sorted(fleet_of(devices))


def test_order_is_reproducible_differs_per_rollout_and_puts_online_devices_first() -> None:
    fleet = list(fleet_of(30, offline={0, 1, 2, 3, 4}).values())
    first = partition("r1", fleet, WAVES)
    assert first == partition("r1", list(reversed(fleet)), WAVES)
    assert first != partition("r2", fleet, WAVES)
    offline = {f"dev-{i:03d}" for i in range(5)}
    assert not offline & set(first[0] + first[1] + first[2])


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        (Selector(tags=frozenset({"lab"})), {"a", "b"}),
        (Selector(tags=frozenset({"lab", "eu"})), {"a"}),
        (Selector(tags=frozenset({"lab"}), hardware_classes=frozenset({"jetson"})), {"b"}),
        (Selector(device_ids=frozenset({"c"})), {"c"}),
        (Selector(), set()),
    ],
)
def test_selector(selector: Selector, expected: set[str]) -> None:
    devices = [
        DeviceInfo("a", tags=frozenset({"lab", "eu"}), hardware_class="x86"),
        DeviceInfo("b", tags=frozenset({"lab"}), hardware_class="jetson"),
        DeviceInfo("c", tags=frozenset(), hardware_class="rpi"),
    ]
    assert {d.device_id for d in devices if selector.matches(d)} == expected


@pytest.mark.parametrize(
    "build",
    [
        lambda: WaveSpec(),
        lambda: WaveSpec(count=1, percent=5),
        lambda: WaveSpec(count=0),
        lambda: WaveSpec(percent=150),
        lambda: WaveSpec(count=1, soak_s=-1),
        lambda: HealthPolicy(max_failure_ratio=2),
        lambda: HealthPolicy(min_reporting_ratio=1.5),
        lambda: HealthPolicy(auto_halt=False, auto_rollback=True),
    ],
)
def test_invalid_plans_are_refused(build: object) -> None:
    with pytest.raises(PlanError):
        build()  # type: ignore[operator]


def test_failure_budget() -> None:
    assert HealthPolicy(max_failures=1).allowed_failures(10) == 1
    assert HealthPolicy(max_failure_ratio=0.1).allowed_failures(25) == 2
    assert HealthPolicy(max_failures=3, max_failure_ratio=0.1).allowed_failures(10) == 3
    assert HealthPolicy(min_reporting_ratio=0.8).required_reports(7) == 6
