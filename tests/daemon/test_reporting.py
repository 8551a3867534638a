"""Engine transitions → lifecycle events and status, with the detail keys the controller reads."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest

from agent import wire
from agent.daemon.reporting import Deployment, MqttReporter
from agent.slots import ModelRef
from agent.state.ports import UpdateEvent

REF = ModelRef(sha256="ab" * 32, file_name="ort-fp32.onnx", target="models/digits/2/ort-fp32.onnx",
               runtime="onnxruntime", precision="fp32", model="digits", version="2")
GATE = {"report": {"candidate": "models/digits/2/ort-fp32.onnx", "runtime": "onnxruntime", "precision": "fp32",
                   "hardware_class": "x86_64-avx2", "measured": {"accuracy": 0.97, "agreement": 0.99,
                                                                 "latency_p50_ms": 0.3},
                   "current": {"accuracy": 0.96, "latency_p50_ms": 0.2}},
        "verdict": {"passed": False, "reasons": ["latency_regression: p50 0.3 ms is 1.50x", "x"]}}
PROBATION = {"figures": {"requests": 200, "errors": 4, "latency_p99_s": 0.006, "baseline_p99_s": 0.002,
                         "shadow": {"rows": 50, "agreement": 0.9, "confidence_drop": 0.25,
                                    "mean_confidence_new": 0.7, "mean_confidence_previous": 0.95}}}


@dataclass
class Sink:
    events: list[tuple[str, str | None, Mapping[str, wire.DetailValue]]] = field(default_factory=list)
    statuses: list[tuple[str, wire.ActiveModel | None, str | None]] = field(default_factory=list)

    def publish_status(self, state: str, *, active: wire.ActiveModel | None = None,
                       assignment_version: int | None = None, rollout_id: str | None = None,
                       last_error: str | None = None) -> int:
        self.statuses.append((state, active, last_error))
        return len(self.statuses)

    def publish_event(self, kind: str, **kw: Any) -> int:
        assert kw["assignment_version"] == 7 and kw["model"] == "digits" and kw["version"] == "2"
        self.events.append((kind, kw["reason"], kw["details"]))
        return len(self.events)


def ev(prev: str, state: str, on: str | None, status: str = "in_progress", reason: str | None = None,
       detail: Mapping[str, Any] | None = None) -> UpdateEvent:
    return UpdateEvent(1, "edge:7", state, prev, on, status, reason, dict(detail or {}))


SUCCESS = [ev("IDLE", "VERIFY", "assign"), ev("VERIFY", "DOWNLOAD", "ok"), ev("DOWNLOAD", "GATE", "ok"),
           ev("GATE", "ACTIVATE", "ok", detail=GATE), ev("ACTIVATE", "PROBATION", "ok"),
           ev("PROBATION", "COMMIT", "ok", detail=PROBATION), ev("COMMIT", "CLEANUP", "ok"),
           ev("CLEANUP", "IDLE", "ok", "success")]
GATE_FAILS = [ev("IDLE", "VERIFY", "assign"), ev("VERIFY", "DOWNLOAD", "ok"), ev("DOWNLOAD", "GATE", "ok"),
              ev("GATE", "DOWNLOAD", "next", reason="gate_failed: int8", detail=GATE), ev("DOWNLOAD", "GATE", "ok"),
              ev("GATE", "FAILURE", "fail", reason="gate_failed: fp32", detail=GATE), ev("FAILURE", "CLEANUP", "ok"),
              ev("CLEANUP", "IDLE", "ok", "failure")]
PROBATION_FAILS = [*SUCCESS[:5], ev("PROBATION", "ROLLBACK", "fail", reason="probation_failed: error_rate",
                                    detail=PROBATION),
                   ev("ROLLBACK", "FAILURE", "ok"), ev("FAILURE", "CLEANUP", "ok"), ev("CLEANUP", "IDLE", "ok",
                                                                                     "rolled_back")]
NOOP = [ev("IDLE", "VERIFY", "assign"), ev("VERIFY", "CLEANUP", "noop", reason="already_active"),
        ev("CLEANUP", "IDLE", "ok", "already_active")]


@pytest.mark.parametrize("events, kinds, last_error", [
    (SUCCESS, ["assignment_received", "download_started", "gate_passed", "activated", "probation_passed",
               "committed"], None),
    (GATE_FAILS, ["assignment_received", "download_started", "download_started", "gate_failed", "failed"],
     "gate_failed: fp32"),
    (PROBATION_FAILS, ["assignment_received", "download_started", "gate_passed", "activated", "probation_failed",
                       "rolled_back"], "probation_failed: error_rate"),
    (NOOP, ["assignment_received", "committed"], None),
])
def test_transitions_become_lifecycle_events(events: list[UpdateEvent], kinds: list[str],
                                             last_error: str | None) -> None:
    sink = Sink()
    reporter = MqttReporter(sink, lambda: REF)
    reporter.begin(Deployment(7, "r-1", "digits", "2"))
    for e in events:
        reporter.report(e)
    assert [k for k, _, _ in sink.events] == kinds
    assert len(sink.statuses) == len(events)
    state, active, error = sink.statuses[-1]
    assert state == "idle" and active is not None and active.version == "2" and error == last_error
    for _, _, details in sink.events:
        wire.encode(wire.Event("edge", "ab" * 8, 1, 0.0, "failed", details=details))  # valid on the wire


def test_detail_keys_the_controller_reads() -> None:
    sink = Sink()
    reporter = MqttReporter(sink, lambda: REF)
    reporter.begin(Deployment(7, "r-1", "digits", "2"))
    for e in SUCCESS:
        reporter.report(e)
    details = {kind: d for kind, _, d in sink.events}
    gate = details["gate_passed"]
    assert gate["accuracy"] == 0.97 and gate["agreement"] == 0.99
    assert gate["latency_regression_ratio"] == pytest.approx(1.5) and "latency_regression" in str(gate["reasons"])
    for kind in ("probation_passed", "committed"):
        assert details[kind]["error_rate"] == pytest.approx(0.02)
        assert details[kind]["latency_p99_ratio"] == pytest.approx(3.0)
        assert details[kind]["agreement"] == 0.9
        assert details[kind]["confidence_drop"] == 0.25 and details[kind]["mean_confidence_new"] == 0.7
        assert details[kind]["mean_confidence_previous"] == 0.95


def test_a_rejected_candidate_with_another_left_is_not_a_device_failure() -> None:
    sink = Sink()
    reporter = MqttReporter(sink, lambda: REF)
    reporter.begin(Deployment(7, "r-1", "digits", "2"))
    for e in GATE_FAILS[:4]:
        reporter.report(e)
    kind, _, details = sink.events[-1]
    assert kind == "download_started" and details["rejected_candidate"] == "models/digits/2/ort-fp32.onnx"
    assert "accuracy" not in details and "latency_regression" in str(details["rejected_reasons"])


def test_failed_event_repeats_the_reason_and_a_broken_pointer_is_reported() -> None:
    sink = Sink()

    def broken() -> ModelRef | None:
        raise OSError("pointer unreadable")

    reporter = MqttReporter(sink, broken)
    reporter.begin(Deployment(7, "r-1", "digits", "2"))
    for e in GATE_FAILS:
        reporter.report(e)
    assert sink.events[-1][:2] == ("failed", "gate_failed: fp32")
    assert sink.statuses[0][2] is not None and "pointer unreadable" in sink.statuses[0][2]
