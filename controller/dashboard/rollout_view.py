"""Rollout records as the dashboard shows them: waves, per-device progress, reasons, the audit trail.

Reads through the rollout engine the app runs (`ctx.extras["rollout_engine"]`): its store for the
persisted records, and `command` for the operator buttons, so a click from the dashboard goes through
exactly the same persisted state machine as `POST /api/v1/rollouts/{id}/pause`.
"""

from __future__ import annotations

import time
from collections import Counter
from datetime import datetime, timezone
from typing import Any

from controller.rollouts import RolloutEngine, RolloutRecord
from controller.rollouts.machine import TRANSITIONS

ENGINE_KEYS = ("rollout_engine", "rollouts")
ACTIONS = ("pause", "resume", "abort", "rollback")


def engine_of(ctx: Any) -> RolloutEngine | None:
    for key in ENGINE_KEYS:
        engine = ctx.extras.get(key)
        if engine is not None and hasattr(engine, "store") and hasattr(engine, "command"):
            return engine  # type: ignore[no-any-return]
    return None


def _when(ts: float | None) -> str:
    if ts is None:
        return ""
    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def _release(ref: Any) -> str:
    return f"{ref.model} {ref.version}" if ref is not None else ""


def allowed_actions(record: RolloutRecord) -> list[str]:
    return [name for name in ACTIONS if (record.state, name) in TRANSITIONS]


def summary(record: RolloutRecord) -> dict[str, Any]:
    states = Counter(p.state.value for p in record.devices.values())
    return {
        "id": record.rollout_id, "release": _release(record.spec.release), "state": record.state.value,
        "wave": record.wave + 1, "waves": len(record.spec.waves), "devices": len(record.devices),
        "succeeded": states.get("succeeded", 0), "failed": states.get("failed", 0) + states.get("timed_out", 0),
        "created": _when(record.created_at), "created_by": record.created_by, "reason": record.reason or "",
    }


def list_rollouts(engine: RolloutEngine) -> list[dict[str, Any]]:
    records = [engine.store.load(i) for i in engine.store.list_ids()]
    return [summary(r) for r in sorted(records, key=lambda r: r.created_at, reverse=True)]


def detail(engine: RolloutEngine, rollout_id: str) -> dict[str, Any]:
    record = engine.store.load(rollout_id)
    now = time.time()
    waves = []
    for index, spec in enumerate(record.spec.waves):
        devices = record.wave_devices(index)
        states = Counter(p.state.value for p in devices.values())
        target = f"{spec.count} devices" if spec.count is not None else f"{spec.percent:g} %"
        waves.append({
            "number": index + 1, "target": target, "soak_s": spec.soak_s, "size": len(devices),
            "current": index == record.wave and not record.state.terminal,
            "states": sorted(states.items()),
            "done": sum(states.get(s, 0) for s in ("succeeded", "failed", "timed_out", "reverted")),
            "devices": [
                {"id": d, "state": p.state.value, "reason": p.reason or "",
                 "assignment_version": p.assignment_version, "previous": _release(p.previous_release),
                 "updated": _when(p.updated_at)}
                for d, p in sorted(devices.items())
            ],
        })
    policy = record.spec.policy
    soak_left_s = None
    if record.soak_started_at is not None and record.state.value == "soaking":
        soak_s = record.spec.waves[record.wave].soak_s
        soak_left_s = max(0.0, soak_s - (now - record.soak_started_at))
    selector = record.spec.selector
    return {
        **summary(record),
        "selector": {"tags": sorted(selector.tags), "hardware_classes": sorted(selector.hardware_classes),
                     "devices": sorted(selector.device_ids)},
        "policy": {k: getattr(policy, k) for k in (
            "max_failures", "max_failure_ratio", "min_reporting_ratio", "device_timeout_s", "min_accuracy",
            "min_agreement", "max_latency_regression_ratio", "max_error_rate", "max_latency_p99_ratio",
            "auto_halt", "auto_rollback") if getattr(policy, k) is not None},
        "soak_left_s": soak_left_s,
        "waves_detail": waves,
        "history": [
            {"at": _when(t.at), "from": t.from_state.value, "to": t.to_state.value, "wave": t.wave + 1,
             "trigger": t.trigger, "actor": t.actor, "reason": t.reason or ""}
            for t in reversed(record.history)
        ],
        "actions": allowed_actions(record),
        "revision": record.revision,
    }
