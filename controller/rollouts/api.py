"""Rollout routes (`/api/v1/rollouts`): create, list, inspect per wave and per device, act, audit.

Include with one line: `app.include_router(controller.rollouts.api.router)`. The routes drive the
rollout engine the app runs (`ctx.extras["rollout_engine"]`, built by `build_engine`); without one they
answer 503. Operator actions go through `RolloutEngine.command`, i.e. the same persisted state machine
as the engine's own decisions, and land in the rollout's history with the caller's token name: that
history is the audit log (`GET /api/v1/rollouts/{id}/history`).

| method | path                              | role     | what                                       |
|--------|-----------------------------------|----------|--------------------------------------------|
| POST   | /api/v1/rollouts                  | operator | create (devices planned into waves); 422 below the release floor or on a bad device policy |
| GET    | /api/v1/rollouts                  | viewer   | list, newest first, optional `state` filter |
| GET    | /api/v1/rollouts/{id}             | viewer   | waves, device progress with reasons, history |
| GET    | /api/v1/rollouts/{id}/history     | viewer   | who did what, when, and why                 |
| POST   | /api/v1/rollouts/{id}/{action}    | operator | pause, resume, abort, rollback              |
"""

from __future__ import annotations

from collections import Counter
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Query, status
from pydantic import BaseModel, ConfigDict, Field

from controller.api.deps import Context
from controller.api.errors import AUTH_ERRORS, error_responses
from controller.auth import OperatorPrincipal, ViewerPrincipal
from controller.errors import Conflict, InvalidInput, NotFound, Unavailable
from controller.rollouts import device_policies
from controller.rollouts.codec import release_to_json
from controller.rollouts.engine import RolloutEngine
from controller.rollouts.errors import InvalidCommand, PlanError, RolloutError, RolloutNotFound, StaleRecord
from controller.rollouts.plan import HealthPolicy, RolloutSpec, Selector, WaveSpec
from controller.rollouts.records import RolloutRecord
from manifests.assignment import ReleaseRef

router = APIRouter(prefix="/api/v1/rollouts", tags=["rollouts"], responses=AUTH_ERRORS)
_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


class ReleaseIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str = Field(min_length=1, max_length=128)
    version: str = Field(min_length=1, max_length=64)


class SelectorIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tags: list[Annotated[str, Field(max_length=64)]] = Field(default_factory=list, max_length=32)
    hardware_classes: list[Annotated[str, Field(max_length=64)]] = Field(default_factory=list, max_length=32)
    device_ids: list[Annotated[str, Field(pattern=_NAME)]] = Field(default_factory=list, max_length=10_000)


class WaveIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    count: int | None = Field(None, ge=1)
    percent: float | None = Field(None, gt=0, le=100)
    soak_s: float = Field(600.0, ge=0, le=30 * 86400)


class PolicyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    max_failures: int = Field(0, ge=0)
    max_failure_ratio: float = Field(0.0, ge=0, le=1)
    min_reporting_ratio: float = Field(1.0, ge=0, le=1)
    device_timeout_s: float = Field(1800.0, gt=0)
    min_accuracy: float | None = Field(None, ge=0, le=1)
    min_agreement: float | None = Field(None, ge=0, le=1)
    max_latency_regression_ratio: float | None = Field(None, gt=0)
    max_error_rate: float | None = Field(None, ge=0, le=1)
    max_latency_p99_ratio: float | None = Field(None, gt=0)
    auto_halt: bool = True
    auto_rollback: bool = False


class RolloutIn(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{
        "id": "digits-2-lab", "release": {"model": "digits", "version": "2"},
        "selector": {"tags": ["lab"]},
        "waves": [{"count": 1, "soak_s": 300}, {"percent": 10, "soak_s": 600}, {"percent": 50},
                  {"percent": 100}],
        "policy": {"max_failure_ratio": 0.05, "max_latency_regression_ratio": 1.5, "auto_rollback": True},
        "device_policies": {"probation": {"window_s": 3600, "max_confidence_drop": 0.05}},
    }]})
    id: str = Field(pattern=_NAME)
    release: ReleaseIn
    selector: SelectorIn
    waves: list[WaveIn] = Field(min_length=1, max_length=20)
    policy: PolicyIn | None = None
    rollback_release: ReleaseIn | None = None
    # A fleet rollback to a release the fleet already ran: its assignments waive the device gate's
    # accuracy-drop check against the current model (422 if no device ever ran the release).
    rollback: bool = False
    # Overrides of the signed device policies, e.g. {"probation": {"window_s": 3600}}; checked field by
    # field with the devices' own reader (`controller.rollouts.device_policies`), 422 naming the field.
    device_policies: dict[str, Any] | None = None


class ActionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str | None = Field(None, max_length=512)


def _engine(ctx: Any) -> RolloutEngine:
    engine = ctx.extras.get("rollout_engine")
    if engine is None:
        raise Unavailable("the rollout engine is not running on this controller")
    return engine  # type: ignore[no-any-return]


def _domain(e: RolloutError) -> Exception:
    if isinstance(e, RolloutNotFound):
        return NotFound(str(e))
    if isinstance(e, (InvalidCommand, StaleRecord)):
        return Conflict(str(e))
    if isinstance(e, PlanError):
        return InvalidInput(str(e))
    return Unavailable(str(e))


@router.post("", status_code=status.HTTP_201_CREATED, responses=error_responses(409, 503))
def create_rollout(body: RolloutIn, ctx: Context, who: OperatorPrincipal) -> dict[str, Any]:
    try:
        spec = RolloutSpec(
            release=ReleaseRef(body.release.model, body.release.version),
            selector=Selector(frozenset(body.selector.tags), frozenset(body.selector.hardware_classes),
                              frozenset(body.selector.device_ids)),
            waves=tuple(WaveSpec(w.count, w.percent, w.soak_s) for w in body.waves),
            policy=HealthPolicy(**body.policy.model_dump()) if body.policy else HealthPolicy(),
            rollback_release=(ReleaseRef(body.rollback_release.model, body.rollback_release.version)
                              if body.rollback_release else None),
            rollback=body.rollback,
            device_policies=device_policies.parse(body.device_policies),
        )
        record = _engine(ctx).create(body.id, spec, who.name)
    except StaleRecord as e:
        raise Conflict(f"rollout {body.id} already exists") from e
    except RolloutError as e:
        raise _domain(e) from e
    return detail(record)


@router.get("", responses=error_responses(503))
def list_rollouts(ctx: Context, who: ViewerPrincipal,
                  state: Annotated[str | None, Query(max_length=16)] = None) -> list[dict[str, Any]]:
    engine = _engine(ctx)
    records = [engine.store.load(i) for i in engine.store.list_ids()]
    records.sort(key=lambda r: r.created_at, reverse=True)
    return [summary(r) for r in records if state is None or r.state.value == state]


@router.get("/{rollout_id}", responses=error_responses(404, 503))
def get_rollout(rollout_id: str, ctx: Context, who: ViewerPrincipal) -> dict[str, Any]:
    try:
        return detail(_engine(ctx).store.load(rollout_id))
    except RolloutError as e:
        raise _domain(e) from e


@router.get("/{rollout_id}/history", responses=error_responses(404, 503))
def get_history(rollout_id: str, ctx: Context, who: ViewerPrincipal) -> list[dict[str, Any]]:
    try:
        return history(_engine(ctx).store.load(rollout_id))
    except RolloutError as e:
        raise _domain(e) from e


@router.post("/{rollout_id}/{action}", responses=error_responses(404, 409, 503))
def act(rollout_id: str, action: Literal["pause", "resume", "abort", "rollback"], ctx: Context,
        who: OperatorPrincipal, body: Annotated[ActionIn | None, Body()] = None) -> dict[str, Any]:
    try:
        record = _engine(ctx).command(rollout_id, action, who.name, body.reason if body else None)
    except RolloutError as e:
        raise _domain(e) from e
    return detail(record)


def summary(record: RolloutRecord) -> dict[str, Any]:
    states = Counter(p.state.value for p in record.devices.values())
    return {
        "id": record.rollout_id, "state": record.state.value, "release": release_to_json(record.spec.release),
        "rollback": record.spec.rollback,
        "wave": record.wave + 1, "waves": len(record.spec.waves), "devices": len(record.devices),
        "device_states": dict(sorted(states.items())), "reason": record.reason,
        "created_at": record.created_at, "created_by": record.created_by, "revision": record.revision,
    }


def history(record: RolloutRecord) -> list[dict[str, Any]]:
    return [{"at": t.at, "from": t.from_state.value, "to": t.to_state.value, "wave": t.wave + 1,
             "trigger": t.trigger, "actor": t.actor, "reason": t.reason} for t in record.history]


def detail(record: RolloutRecord) -> dict[str, Any]:
    waves = []
    for index, spec in enumerate(record.spec.waves):
        devices = record.wave_devices(index)
        waves.append({
            "number": index + 1, "count": spec.count, "percent": spec.percent, "soak_s": spec.soak_s,
            "size": len(devices), "device_states": dict(sorted(Counter(p.state.value for p in devices.values()).items())),
        })
    selector = record.spec.selector
    return {
        **summary(record),
        "selector": {"tags": sorted(selector.tags), "hardware_classes": sorted(selector.hardware_classes),
                     "device_ids": sorted(selector.device_ids)},
        "policy": {k: getattr(record.spec.policy, k) for k in HealthPolicy.__dataclass_fields__},
        "device_policies": record.spec.device_policies.to_json(),
        "wave_started_at": record.wave_started_at, "soak_started_at": record.soak_started_at,
        "waves_detail": waves,
        "device_progress": [
            {"device_id": d, "wave": p.wave + 1, "state": p.state.value, "reason": p.reason,
             "assignment_version": p.assignment_version, "previous_release": release_to_json(p.previous_release),
             "revert_version": p.revert_version, "updated_at": p.updated_at}
            for d, p in sorted(record.devices.items())
        ],
        "history": history(record),
    }
