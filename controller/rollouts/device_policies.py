"""A rollout's overrides of the device-side policies its assignments are signed with.

    {"gate": {"max_latency_regression_ratio": 1.2},
     "probation": {"window_s": 3600, "max_confidence_drop": 0.05},
     "capture": {"enabled": true, "random_rate": 0.01}}

Only what the operator set is kept; every other field falls through to the release's and the fleet's
values (`apply`). Overrides are checked with the very reader devices apply to signed policies
(`manifests.assignment`), so a rollout the controller accepts never carries a value an agent would
refuse; the only extra rule is the one the director owns: `gate.max_accuracy_drop` may not be waived
(null) here, because that waiver is reserved for fleet rollbacks (`"rollback": true`).

Deliberately not here: which assignments the overrides reach and in which order they merge with the
release floor (`service.release_policies`), and storage (`codec`, `sql`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, TypeVar

from controller.rollouts.errors import PlanError
from manifests.assignment import CapturePolicy, GatePolicy, ProbationPolicy, read_policy
from manifests.errors import TrustError

if TYPE_CHECKING:
    from controller.rollouts.assigner import AssignmentPolicies

SECTIONS: dict[str, type[Any]] = {"gate": GatePolicy, "probation": ProbationPolicy, "capture": CapturePolicy}
WHERE = "device_policies"
_P = TypeVar("_P")


def _frozen(values: Mapping[str, Any] | None = None) -> Mapping[str, Any]:
    return MappingProxyType(dict(values or {}))


@dataclass(frozen=True)
class PolicyOverrides:
    """The fields an operator set per policy section; empty sections change nothing."""

    gate: Mapping[str, Any] = field(default_factory=_frozen)
    probation: Mapping[str, Any] = field(default_factory=_frozen)
    capture: Mapping[str, Any] = field(default_factory=_frozen)

    def __post_init__(self) -> None:
        for section in SECTIONS:
            object.__setattr__(self, section, _frozen(getattr(self, section)))

    def __bool__(self) -> bool:
        return any(getattr(self, section) for section in SECTIONS)

    def to_json(self) -> dict[str, dict[str, Any]]:
        """Only the sections that set something: a rollout without overrides stores nothing."""
        return {s: dict(getattr(self, s)) for s in SECTIONS if getattr(self, s)}

    def apply(self, policies: AssignmentPolicies, *, own_release: bool = True) -> AssignmentPolicies:
        """`policies` with the operator's fields on top.

        `own_release=False` (an assignment naming another release, i.e. a revert) keeps that release's
        `gate.min_accuracy`: an accuracy floor is about one model, not about the rollout.
        """
        gate = dict(self.gate)
        if not own_release:
            gate.pop("min_accuracy", None)
        return dataclasses.replace(
            policies,
            gate=_replace(policies.gate, gate),
            probation=_replace(policies.probation, self.probation),
            capture=_replace(policies.capture, self.capture),
        )


def _replace(policy: _P, values: Mapping[str, Any]) -> _P:
    return dataclasses.replace(policy, **values) if values else policy  # type: ignore[type-var]


def parse(raw: object) -> PolicyOverrides:
    """Validate an operator's overrides (None: none); PlanError names the offending field."""
    if raw is None:
        return PolicyOverrides()
    if not isinstance(raw, dict):
        raise PlanError(f"{WHERE} must be an object with gate, probation and/or capture, got {type(raw).__name__}")
    unknown = sorted(set(raw) - set(SECTIONS))
    if unknown:
        raise PlanError(f"{WHERE} has unknown sections {unknown}; expected some of {sorted(SECTIONS)}")
    sections: dict[str, dict[str, Any]] = {}
    for section, cls in SECTIONS.items():
        given = raw.get(section, {})
        try:
            checked = read_policy(cls, given, f"{WHERE}.{section}")
        except TrustError as e:
            raise PlanError(str(e).removeprefix(f"{e.reason.value}: ")) from e
        sections[section] = {name: getattr(checked, name) for name in given}
    if "max_accuracy_drop" in sections["gate"] and sections["gate"]["max_accuracy_drop"] is None:
        raise PlanError(f"{WHERE}.gate.max_accuracy_drop may not be null: only a fleet rollback "
                        '("rollback": true) waives the accuracy-drop check')
    return PolicyOverrides(**sections)
