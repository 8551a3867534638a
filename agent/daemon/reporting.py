"""The engine's Reporter port over MQTT: state transitions become lifecycle events and status.

The engine reports every transition (`VERIFY → DOWNLOAD`, ...); the controller wants lifecycle
events with stable kinds (`gate_passed`, `committed`, ...) and flat `details` whose keys it reads
(`accuracy`, `agreement`, `latency_regression_ratio`, `error_rate`, `latency_p99_ratio`; see
`controller.rollouts.signals`). This module does that translation and nothing else; the outbox
under `EventSink` persists before sending, so a transition reported here survives a restart.

| transition (entered state ← from, on event)   | event kind          | details                         |
|-----------------------------------------------|---------------------|---------------------------------|
| VERIFY ← IDLE (assign)                         | assignment_received |                                 |
| DOWNLOAD ← VERIFY                              | download_started    | candidates                      |
| DOWNLOAD ← GATE (next: another candidate left) | download_started    | rejected_candidate, _reasons    |
| FAILURE ← DOWNLOAD                             | download_failed     |                                 |
| ACTIVATE ← GATE (ok)                           | gate_passed         | gate figures                    |
| FAILURE ← GATE (fail: no candidate left)       | gate_failed         | gate figures, reasons           |
| PROBATION ← ACTIVATE (ok)                      | activated           | variant                         |
| COMMIT ← PROBATION (ok)                        | probation_passed    | live figures                    |
| ROLLBACK ← PROBATION (fail)                    | probation_failed    | live figures (the evidence)     |
| FAILURE ← ROLLBACK (ok)                        | rolled_back         |                                 |
| CLEANUP ← COMMIT, or ← VERIFY (noop)           | committed           | live figures / already_active   |
| IDLE with status failure / rollback_failed     | failed              | final status                    |

Every report also refreshes the retained `status` (coalesced in the outbox: only the latest counts).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from agent import wire
from agent.slots import ModelRef

if TYPE_CHECKING:  # agent.state.ports pulls in the stager and python-tuf; an idle agent does without
    from agent.state.ports import UpdateEvent

log = logging.getLogger(__name__)
MAX_DETAIL_ITEMS = wire.MAX_DETAILS_ITEMS
MAX_DETAIL_TEXT = 1024


class EventSink(Protocol):
    """What the reporter needs from the MQTT session (`agent.mqtt.AgentSession` has it)."""

    def publish_status(self, state: str, *, active: wire.ActiveModel | None = None,
                       assignment_version: int | None = None, rollout_id: str | None = None,
                       last_error: str | None = None) -> int: ...

    def publish_event(self, kind: str, *, assignment_version: int | None = None, rollout_id: str | None = None,
                      model: str | None = None, version: str | None = None, reason: str | None = None,
                      details: Mapping[str, wire.DetailValue] | None = None) -> int: ...


@dataclass(frozen=True)
class Deployment:
    """What the events of one update are about (from its verified assignment)."""

    assignment_version: int | None = None
    rollout_id: str | None = None
    model: str | None = None
    version: str | None = None


def active_of(ref: ModelRef | None) -> wire.ActiveModel | None:
    if ref is None:
        return None
    return wire.ActiveModel(ref.model or "unknown", ref.version or "unknown", ref.target.rsplit("/", 1)[-1],
                            ref.sha256)


def flatten(doc: Mapping[str, Any], prefix: str = "", out: dict[str, wire.DetailValue] | None = None
            ) -> dict[str, wire.DetailValue]:
    """Nested figures → `a.b.c` keys with wire-safe values (finite numbers, short strings)."""
    out = {} if out is None else out
    for key, value in doc.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flatten(value, f"{name}.", out)
        elif isinstance(value, (list, tuple)):
            out[name] = "; ".join(str(v) for v in value)[:MAX_DETAIL_TEXT]
        elif isinstance(value, float) and not math.isfinite(value):
            out[name] = None
        elif value is None or isinstance(value, (bool, int, float)):
            out[name] = value
        else:
            out[name] = str(value)[:MAX_DETAIL_TEXT]
    return out


def _bounded(details: dict[str, wire.DetailValue]) -> dict[str, wire.DetailValue]:
    """Keep the contract keys first, then the rest up to the wire's item limit."""
    keys = sorted(details, key=lambda k: ("." in k, k))
    return {k[:128]: details[k] for k in keys[:MAX_DETAIL_ITEMS]}


def gate_details(detail: Mapping[str, Any]) -> dict[str, wire.DetailValue]:
    report = detail.get("report", {}) if isinstance(detail.get("report"), Mapping) else {}
    verdict = detail.get("verdict", {}) if isinstance(detail.get("verdict"), Mapping) else {}
    measured = report.get("measured") or {}
    current = report.get("current") or {}
    out: dict[str, wire.DetailValue] = {}
    for key in ("candidate", "runtime", "precision", "hardware_class", "duration_s", "error",
                "agreement_with_current"):
        out[key] = report.get(key)
    for key in ("accuracy", "agreement", "latency_p50_ms", "latency_p95_ms", "latency_p99_ms", "peak_rss_mb",
                "load_s", "nonfinite_values"):
        out[key] = measured.get(key)
    if current:
        out["current_accuracy"] = current.get("accuracy")
        out["current_latency_p50_ms"] = current.get("latency_p50_ms")
    p50, cur50 = measured.get("latency_p50_ms"), current.get("latency_p50_ms") if current else None
    if isinstance(p50, (int, float)) and isinstance(cur50, (int, float)) and cur50 > 0:
        out["latency_regression_ratio"] = p50 / cur50
    reasons = verdict.get("reasons", [])
    out["reasons"] = "; ".join(str(r) for r in reasons) if isinstance(reasons, list) else str(reasons)
    return flatten(out)


def probation_details(detail: Mapping[str, Any]) -> dict[str, wire.DetailValue]:
    figures = detail.get("figures") if isinstance(detail.get("figures"), Mapping) else None
    if figures is None:
        return flatten(detail)
    out: dict[str, Any] = {k: v for k, v in figures.items() if k != "shadow"}
    requests, errors = figures.get("requests"), figures.get("errors")
    if isinstance(requests, int) and isinstance(errors, int) and requests > 0:
        out["error_rate"] = errors / requests
    p99, base99 = figures.get("latency_p99_s"), figures.get("baseline_p99_s")
    if isinstance(p99, (int, float)) and isinstance(base99, (int, float)) and base99 > 0:
        out["latency_p99_ratio"] = p99 / base99
    shadow = figures.get("shadow")
    if isinstance(shadow, Mapping):
        out["agreement"] = shadow.get("agreement")
        out["shadow_rows"] = shadow.get("rows")
        for key in ("confidence_drop", "mean_confidence_new", "mean_confidence_previous"):
            if shadow.get(key) is not None:
                out[key] = shadow[key]
    return flatten(out)


class MqttReporter:
    """Reporter port. `current()` reads the `current` pointer for the status' active model."""

    def __init__(self, sink: EventSink, current: Callable[[], ModelRef | None]) -> None:
        self.sink = sink
        self.current = current
        self.deployment = Deployment()
        self._probation: dict[str, wire.DetailValue] = {}
        self._reason: str | None = None
        self.state: str | None = None  # the last state published, for telemetry batches

    def begin(self, deployment: Deployment) -> None:
        self.deployment = deployment
        self._probation = {}
        self._reason = None

    def report(self, event: UpdateEvent) -> None:
        # The engine names a reason on the transition that caused it; the final IDLE transition
        # carries none, so the update's last reason is what the `failed` event and status repeat.
        if event.reason is not None and not event.reason.startswith("resumed after a restart"):
            self._reason = event.reason
        reason = event.reason or (self._reason if event.state == "IDLE" else None)
        kind, details = self._translate(event)
        d = self.deployment
        if kind is not None:
            self.sink.publish_event(kind, assignment_version=d.assignment_version, rollout_id=d.rollout_id,
                                    model=d.model, version=d.version, reason=_short(reason),
                                    details=_bounded(details))
        failed = event.status in ("failure", "rolled_back", "rollback_failed")
        self.publish_status(event.state.lower() if event.state != "IDLE" else "idle",
                            self._reason if failed else None)

    def publish_status(self, state: str, last_error: str | None = None) -> None:
        try:
            current = self.current()
        except Exception as e:  # an unreadable pointer is reported, not raised into the engine
            current = None
            last_error = last_error or f"current pointer unreadable: {e}"
        d = self.deployment
        self.state = state
        self.sink.publish_status(state, active=active_of(current), assignment_version=d.assignment_version,
                                 rollout_id=d.rollout_id, last_error=_short(last_error))

    def _translate(self, e: UpdateEvent) -> tuple[str | None, dict[str, wire.DetailValue]]:
        came_from, state, on = e.previous_state, e.state, e.event
        detail: Mapping[str, Any] = e.detail
        if state == "VERIFY" and on == "assign":
            return "assignment_received", {}
        if state == "DOWNLOAD" and came_from == "VERIFY":
            return "download_started", flatten({k: v for k, v in detail.items() if k != "rejected"})
        if came_from == "DOWNLOAD" and state == "FAILURE":
            return "download_failed", flatten(detail)
        if came_from == "GATE":
            if state == "ACTIVATE":
                return "gate_passed", gate_details(detail)
            if state == "DOWNLOAD":
                # Another candidate is left: not a failure of the device. The rejected candidate's
                # figures stay out of the details, where a rollout would judge them as the device's.
                figures = gate_details(detail)
                return "download_started", {"rejected_candidate": figures.get("candidate"),
                                             "rejected_reasons": figures.get("reasons")}
            return "gate_failed", gate_details(detail)
        if came_from == "ACTIVATE" and state == "PROBATION":
            return "activated", flatten(detail)
        if came_from == "PROBATION":
            self._probation = probation_details(detail)
            return ("probation_passed" if state == "COMMIT" else "probation_failed"), dict(self._probation)
        if came_from == "ROLLBACK" and on == "ok":
            return "rolled_back", flatten(detail)
        if state == "CLEANUP" and came_from == "COMMIT":
            return "committed", dict(self._probation)
        if state == "CLEANUP" and came_from == "VERIFY" and on == "noop":
            return "committed", {"already_active": True}
        if state == "IDLE" and e.status in ("failure", "rollback_failed"):
            return "failed", {"status": e.status}
        return None, {}


def _short(text: str | None) -> str | None:
    return None if text is None else text[:wire.MAX_TEXT_CHARS]
