"""JSON form of rollout specs and records, for the file store, the SQL store's JSON column and the API.

The record carries `"schema": 1`; a record written by a newer controller is refused rather than
half-understood. Field names are persisted: never rename them.
"""

from __future__ import annotations

from typing import Any

from controller.rollouts import device_policies
from controller.rollouts.errors import PlanError
from controller.rollouts.plan import HealthPolicy, RolloutSpec, Selector, WaveSpec
from controller.rollouts.records import DeviceProgress, RolloutRecord, RolloutState, Transition
from controller.rollouts.signals import DeviceState
from manifests.assignment import ReleaseRef

SCHEMA = 1
_POLICY_FIELDS = tuple(HealthPolicy.__dataclass_fields__)


def release_to_json(release: ReleaseRef | None) -> dict[str, str] | None:
    return None if release is None else {"model": release.model, "version": release.version}


def release_from_json(raw: Any) -> ReleaseRef | None:
    if raw is None:
        return None
    if not isinstance(raw, dict) or not isinstance(raw.get("model"), str) or not isinstance(raw.get("version"), str):
        raise PlanError(f"release must be {{model, version}} strings, got {raw!r:.80}")
    return ReleaseRef(raw["model"], raw["version"])


def spec_to_json(spec: RolloutSpec) -> dict[str, Any]:
    """`device_policies` only when set: a rollout without overrides keeps the form older controllers wrote."""
    out = {
        "release": release_to_json(spec.release),
        "rollback_release": release_to_json(spec.rollback_release),
        "rollback": spec.rollback,
        "selector": {
            "tags": sorted(spec.selector.tags),
            "hardware_classes": sorted(spec.selector.hardware_classes),
            "device_ids": sorted(spec.selector.device_ids),
        },
        "waves": [{"count": w.count, "percent": w.percent, "soak_s": w.soak_s} for w in spec.waves],
        "policy": {name: getattr(spec.policy, name) for name in _POLICY_FIELDS},
    }
    if spec.device_policies:
        out["device_policies"] = spec.device_policies.to_json()
    return out


def spec_from_json(raw: dict[str, Any]) -> RolloutSpec:
    try:
        release = release_from_json(raw["release"])
        assert release is not None
        selector = raw["selector"]
        return RolloutSpec(
            release=release,
            rollback_release=release_from_json(raw.get("rollback_release")),
            rollback=_bool(raw.get("rollback", False), "rollback"),
            selector=Selector(
                tags=frozenset(selector.get("tags", ())),
                hardware_classes=frozenset(selector.get("hardware_classes", ())),
                device_ids=frozenset(selector.get("device_ids", ())),
            ),
            waves=tuple(WaveSpec(**w) for w in raw["waves"]),
            policy=HealthPolicy(**raw.get("policy", {})),
            device_policies=device_policies.parse(raw.get("device_policies")),
        )
    except (KeyError, TypeError, AssertionError) as e:
        raise PlanError(f"invalid rollout spec: {e}") from e


def _bool(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise PlanError(f"{where} must be true or false, got {value!r:.40}")
    return value


def record_to_json(record: RolloutRecord) -> dict[str, Any]:
    return {
        "schema": SCHEMA,
        "rollout_id": record.rollout_id,
        "spec": spec_to_json(record.spec),
        "state": record.state.value,
        "created_at": record.created_at,
        "created_by": record.created_by,
        "wave": record.wave,
        "wave_started_at": record.wave_started_at,
        "soak_started_at": record.soak_started_at,
        "paused_state": None if record.paused_state is None else record.paused_state.value,
        "paused_at": record.paused_at,
        "accepted_failures": {str(w): n for w, n in record.accepted_failures.items()},
        "reason": record.reason,
        "revision": record.revision,
        "devices": {
            device_id: {
                "wave": p.wave,
                "state": p.state.value,
                "assignment_version": p.assignment_version,
                "waiting_since": p.waiting_since,
                "updated_at": p.updated_at,
                "reason": p.reason,
                "previous_release": release_to_json(p.previous_release),
                "revert_version": p.revert_version,
            }
            for device_id, p in sorted(record.devices.items())
        },
        "history": [
            {"at": t.at, "from": t.from_state.value, "to": t.to_state.value, "wave": t.wave,
             "trigger": t.trigger, "actor": t.actor, "reason": t.reason}
            for t in record.history
        ],
    }


def record_from_json(raw: dict[str, Any]) -> RolloutRecord:
    if raw.get("schema") != SCHEMA:
        raise PlanError(f"expected rollout record schema {SCHEMA}, got {raw.get('schema')!r}")
    try:
        devices = {
            device_id: DeviceProgress(
                wave=int(p["wave"]),
                state=DeviceState(p["state"]),
                assignment_version=p.get("assignment_version"),
                waiting_since=p.get("waiting_since"),
                updated_at=p.get("updated_at"),
                reason=p.get("reason"),
                previous_release=release_from_json(p.get("previous_release")),
                revert_version=p.get("revert_version"),
            )
            for device_id, p in raw["devices"].items()
        }
        history = tuple(
            Transition(t["at"], RolloutState(t["from"]), RolloutState(t["to"]), t["wave"], t["trigger"],
                       t["actor"], t.get("reason"))
            for t in raw["history"]
        )
        return RolloutRecord(
            rollout_id=raw["rollout_id"],
            spec=spec_from_json(raw["spec"]),
            state=RolloutState(raw["state"]),
            created_at=raw["created_at"],
            created_by=raw["created_by"],
            wave=raw["wave"],
            wave_started_at=raw.get("wave_started_at"),
            soak_started_at=raw.get("soak_started_at"),
            paused_state=None if raw.get("paused_state") is None else RolloutState(raw["paused_state"]),
            paused_at=raw.get("paused_at"),
            accepted_failures={int(w): int(n) for w, n in raw.get("accepted_failures", {}).items()},
            devices=devices,
            reason=raw.get("reason"),
            history=history,
            revision=raw["revision"],
        )
    except (KeyError, TypeError, ValueError) as e:
        raise PlanError(f"invalid rollout record: {e}") from e
