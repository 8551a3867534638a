"""The update driver's transitions become the named lifecycle events and statuses the controller reads."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from agent import wire
from agent.mqtt.reporter import MqttReporter
from agent.state.ports import UpdateEvent


class Recorder:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.statuses: list[dict[str, Any]] = []

    def publish_event(self, kind: str, **fields: Any) -> int:
        wire.encode(wire.Event("dev-1", "ab" * 8, len(self.events), 0.0, kind, **fields))  # must be valid
        self.events.append({"kind": kind, **fields})
        return len(self.events)

    def publish_status(self, state: str, **fields: Any) -> int:
        self.statuses.append({"state": state, **fields})
        return len(self.statuses)


def _ev(prev: str | None, state: str, status: str = "in_progress", reason: str | None = None,
        detail: Mapping[str, Any] | None = None) -> UpdateEvent:
    return UpdateEvent(seq=1, deployment_id="dev-1:7", state=state, previous_state=prev, event=None,
                       status=status, reason=reason, detail=dict(detail or {}))


GATE_DETAIL = {
    "report": {"candidate": "models/digits/2/ort-fp32.onnx", "runtime": "onnxruntime", "precision": "fp32",
               "measured": {"accuracy": 0.97, "agreement": 0.99, "latency_p50_ms": 0.3, "latency_p95_ms": 0.5,
                            "latency_p99_ms": 0.9, "peak_rss_mb": 12.0, "samples": 360},
               "current": {"latency_p50_ms": 0.2}},
    "verdict": {"passed": True, "reasons": []},
}


def test_a_successful_update_maps_to_named_events_with_rollout_context(tmp_path: Path) -> None:
    recorder = Recorder()
    reporter = MqttReporter(recorder, tmp_path / "ctx.json")
    reporter.remember(7, "r1", "digits", "2")
    for prev, state, detail in [("IDLE", "VERIFY", None), ("VERIFY", "DOWNLOAD", None), ("DOWNLOAD", "GATE", None),
                                ("GATE", "ACTIVATE", GATE_DETAIL), ("ACTIVATE", "PROBATION", None),
                                ("PROBATION", "COMMIT", {"error_rate": 0.0, "latency_p99_ratio": 1.1}),
                                ("COMMIT", "CLEANUP", None)]:
        reporter.report(_ev(prev, state, detail=detail))
    reporter.report(_ev("CLEANUP", "IDLE", status="success"))
    assert [e["kind"] for e in recorder.events] == [
        "assignment_received", "download_started", "gate_passed", "activated", "probation_passed", "committed"]
    gate = recorder.events[2]
    assert gate["rollout_id"] == "r1" and gate["assignment_version"] == 7 and gate["version"] == "2"
    assert gate["details"]["accuracy"] == 0.97 and gate["details"]["latency_regression_ratio"] == 1.5
    assert recorder.events[4]["details"] == {"error_rate": 0.0, "latency_p99_ratio": 1.1}
    assert recorder.statuses[-1] == {"state": "IDLE", "last_error": None, "assignment_version": 7,
                                     "rollout_id": "r1"}


def test_failures_and_context_after_a_restart(tmp_path: Path) -> None:
    MqttReporter(Recorder(), tmp_path / "ctx.json").remember(7, "r1", "digits", "2")
    recorder = Recorder()
    reporter = MqttReporter(recorder, tmp_path / "ctx.json")  # a restarted agent
    reporter.report(_ev("GATE", "DOWNLOAD", reason="gate_failed: int8 variant"))  # another candidate left
    reporter.report(_ev("GATE", "FAILURE", reason="gate_failed: accuracy_below_min", detail={
        "report": {"measured": {"accuracy": float("nan")}}, "verdict": {"reasons": ["accuracy_below_min"]}}))
    reporter.report(_ev("PROBATION", "ROLLBACK", reason="probation_failed: error rate"))
    reporter.report(_ev("ROLLBACK", "FAILURE"))
    reporter.report(_ev("CLEANUP", "IDLE", status="rolled_back", reason="probation_failed: error rate"))
    assert [e["kind"] for e in recorder.events] == ["download_started", "gate_failed", "probation_failed",
                                                    "rolled_back"]
    assert all(e["rollout_id"] == "r1" for e in recorder.events)
    assert recorder.events[1]["details"] == {"verdict": "accuracy_below_min"}
    assert recorder.statuses[-1]["last_error"] == "probation_failed: error rate"


def test_unknown_deployment_still_reports_without_context(tmp_path: Path) -> None:
    recorder = Recorder()
    reporter = MqttReporter(recorder, tmp_path / "ctx.json")
    reporter.report(UpdateEvent(seq=1, deployment_id="garbled", state="VERIFY", previous_state="IDLE",
                                event="assign", status="in_progress"))
    assert recorder.events[0]["assignment_version"] is None and recorder.events[0]["rollout_id"] is None
