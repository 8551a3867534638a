"""`MqttReporter`: the update engine's `Reporter` port, speaking the `events` and `status` wire formats.

The update driver reports every state transition of its journal (`agent.state.ports.UpdateEvent`). The
controller's rollout engine needs fewer, named lifecycle steps with the figures that decide a rollout
(accuracy, agreement, latency regression, probation error rate), each tagged with the assignment
version and rollout id. This adapter maps one to the other and sends both through the session's
persisted outbox; the latest transition also becomes the device's retained `status`.

| driver transition (previous → state)      | event sent             |
|-------------------------------------------|------------------------|
| IDLE → VERIFY (assign)                    | `assignment_received`  |
| VERIFY → DOWNLOAD                         | `download_started`     |
| GATE → ACTIVATE                           | `gate_passed` + gate figures |
| GATE → FAILURE                            | `gate_failed` + gate figures |
| DOWNLOAD → FAILURE                        | `download_failed`      |
| VERIFY → FAILURE                          | `failed`               |
| ACTIVATE → PROBATION                      | `activated`            |
| PROBATION → COMMIT                        | `probation_passed` + probation figures |
| PROBATION → ROLLBACK                      | `probation_failed` + probation figures |
| ROLLBACK → FAILURE                        | `rolled_back`          |
| COMMIT → CLEANUP, VERIFY → CLEANUP (noop) | `committed`            |

A gate rejection of one candidate while another is left (GATE → DOWNLOAD) is not a failure of the
device and is sent as `download_started`. The assignment a deployment belongs to is remembered on disk
(`remember`), so events after an agent restart still carry their rollout id.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from agent import wire

_MAX_REMEMBERED = 16
_GATE_FIGURES = ("accuracy", "agreement", "latency_p50_ms", "latency_p95_ms", "latency_p99_ms", "peak_rss_mb")

_EVENT_FOR: dict[tuple[str | None, str], str] = {
    ("IDLE", "VERIFY"): "assignment_received",
    ("VERIFY", "DOWNLOAD"): "download_started",
    ("GATE", "DOWNLOAD"): "download_started",
    ("GATE", "ACTIVATE"): "gate_passed",
    ("GATE", "FAILURE"): "gate_failed",
    ("DOWNLOAD", "FAILURE"): "download_failed",
    ("VERIFY", "FAILURE"): "failed",
    ("ACTIVATE", "PROBATION"): "activated",
    ("PROBATION", "COMMIT"): "probation_passed",
    ("PROBATION", "ROLLBACK"): "probation_failed",
    ("ROLLBACK", "FAILURE"): "rolled_back",
    ("COMMIT", "CLEANUP"): "committed",
    ("VERIFY", "CLEANUP"): "committed",
}


class UpdateEventLike(Protocol):
    """The fields of `agent.state.ports.UpdateEvent` this adapter reads."""

    @property
    def deployment_id(self) -> str: ...
    @property
    def state(self) -> str: ...
    @property
    def previous_state(self) -> str | None: ...
    @property
    def status(self) -> str: ...
    @property
    def reason(self) -> str | None: ...
    @property
    def detail(self) -> Mapping[str, Any]: ...


class EventPublisher(Protocol):
    """What the reporter needs from `AgentSession`."""

    def publish_event(self, kind: str, *, assignment_version: int | None = ..., rollout_id: str | None = ...,
                      model: str | None = ..., version: str | None = ..., reason: str | None = ...,
                      details: Mapping[str, wire.DetailValue] | None = ...) -> int: ...

    def publish_status(self, state: str, *, active: wire.ActiveModel | None = ...,
                       assignment_version: int | None = ..., rollout_id: str | None = ...,
                       last_error: str | None = ...) -> int: ...


class MqttReporter:
    def __init__(self, session: EventPublisher, context_path: Path) -> None:
        self.session = session
        self.context_path = context_path
        self._context: dict[str, dict[str, str | None]] = self._load()

    def remember(self, assignment_version: int, rollout_id: str | None, model: str, version: str) -> None:
        """Record which release and rollout an assignment version belongs to (call on acceptance)."""
        self._context[str(assignment_version)] = {"rollout_id": rollout_id, "model": model, "version": version}
        keep = sorted(self._context, key=int)[-_MAX_REMEMBERED:]
        self._context = {k: self._context[k] for k in keep}
        tmp = self.context_path.with_name(self.context_path.name + ".tmp")
        tmp.write_text(json.dumps(self._context))
        os.replace(tmp, self.context_path)

    def report(self, event: UpdateEventLike) -> None:
        assignment_version = _version_of(event.deployment_id)
        ctx = self._context.get(str(assignment_version), {}) if assignment_version is not None else {}
        kind = _EVENT_FOR.get((event.previous_state, event.state))
        common: dict[str, Any] = {
            "assignment_version": assignment_version,
            "rollout_id": ctx.get("rollout_id"),
        }
        if kind is not None:
            details = _gate_figures(event.detail) if kind in ("gate_passed", "gate_failed") else _scalars(event.detail)
            self.session.publish_event(kind, model=ctx.get("model"), version=ctx.get("version"),
                                       reason=_short(event.reason), details=details, **common)
        failed = event.state == "IDLE" and event.status not in ("success", "already_active")
        self.session.publish_status(event.state, last_error=_short(event.reason) if failed else None, **common)

    def _load(self) -> dict[str, dict[str, str | None]]:
        try:
            raw = json.loads(self.context_path.read_text())
        except (OSError, ValueError):
            return {}
        if not isinstance(raw, dict):
            return {}
        return {k: v for k, v in raw.items() if k.isdigit() and isinstance(v, dict)}


def _version_of(deployment_id: str) -> int | None:
    tail = deployment_id.rsplit(":", 1)[-1]
    return int(tail) if tail.isdigit() else None


def _short(text: str | None, limit: int = 512) -> str | None:
    return None if not text else text[:limit]


def _scalars(detail: Mapping[str, Any]) -> dict[str, wire.DetailValue]:
    out: dict[str, wire.DetailValue] = {}
    for key, value in list(detail.items())[: wire.MAX_DETAILS_ITEMS]:
        if isinstance(value, float) and value != value:  # NaN cannot travel as JSON
            continue
        if value is None or isinstance(value, (bool, int, float)):
            out[str(key)[:128]] = value
        elif isinstance(value, str):
            out[str(key)[:128]] = value[:1024]
    return out


def _gate_figures(detail: Mapping[str, Any]) -> dict[str, wire.DetailValue]:
    """Flatten the gate report into the keys the controller's rollout policy reads."""
    report = detail.get("report") if isinstance(detail.get("report"), Mapping) else {}
    assert isinstance(report, Mapping)
    measured = report.get("measured") if isinstance(report.get("measured"), Mapping) else {}
    current = report.get("current") if isinstance(report.get("current"), Mapping) else {}
    assert isinstance(measured, Mapping) and isinstance(current, Mapping)
    out = _scalars({k: measured[k] for k in _GATE_FIGURES if measured.get(k) is not None})
    for key in ("candidate", "runtime", "precision", "agreement_with_current"):
        if report.get(key) is not None:
            out.update(_scalars({key: report[key]}))
    new_p50, old_p50 = measured.get("latency_p50_ms"), current.get("latency_p50_ms")
    if isinstance(new_p50, (int, float)) and isinstance(old_p50, (int, float)) and old_p50 > 0:
        out["latency_regression_ratio"] = round(float(new_p50) / float(old_p50), 4)
    verdict = detail.get("verdict")
    if isinstance(verdict, Mapping) and isinstance(verdict.get("reasons"), list):
        out["verdict"] = "; ".join(str(r) for r in verdict["reasons"])[:1024] or "passed"
    return out
