"""Sample capture through the real daemon: a device enrolled with a served controller (create_app +
uvicorn), assignments over a real Mosquitto, inference over the daemon's local endpoint, samples uploaded
with the device's own credentials through presigned URLs, listed and exported by the controller.

    ControllerSide (signed repo + director) ──MQTT──▶ edgefleet-agent run ◀── N inference requests
    controller app ◀──enroll── device          │ capture per the assignment's CapturePolicy
          ▲ /api/v1/device/samples/*  ◀────────┘ periodic upload rounds
          └ GET /api/v1/samples, `edgefleet samples export`
"""

from __future__ import annotations

import io
import json
import secrets
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from fastapi.testclient import TestClient
from onnx import numpy_helper
from typer.testing import CliRunner

from agent.capture import SampleMeta
from agent.daemon.capture import CaptureWiring
from agent.daemon.config import DaemonConfig, build_config
from agent.enroll import enroll
from controller.app import create_app
from controller.auth import create_api_token
from controller.sample_models import SampleModel
from controller.samples.export import load_dataset
from controller.samples_cli import app as samples_cli
from controller.settings import Settings
from manifests import assignment as A
from manifests import director
from manifests.verify import SignedTarget
from tests.daemon.fleet import AgentProcess, ControllerSide, wait_for
from tests.provisioning.harness import ServedApp
from tests.services import HOST, free_port

DEVICE = "edge-capture-1"
CAP = 12


@dataclass
class Served:
    url: str
    app: Any
    config_file: Path
    viewer_token: str

    def samples(self, model: str = "digits") -> list[dict[str, Any]]:
        request = urllib.request.Request(f"{self.url}/api/v1/samples?model={model}&limit=200",
                                         headers={"Authorization": f"Bearer {self.viewer_token}"})
        with urllib.request.urlopen(request, timeout=10) as response:
            items: list[dict[str, Any]] = json.loads(response.read())["items"]
        return items


@pytest.fixture
def world(tmp_path: Path, mosquitto: Any) -> Iterator[tuple[ControllerSide, Served, AgentProcess]]:
    side = ControllerSide(tmp_path, mosquitto.port, DEVICE)  # its keyring (tmp/keys) is the controller's too
    port = free_port()
    settings = Settings(state_dir=tmp_path / "controller", database_url=f"sqlite:///{tmp_path / 'controller.db'}",
                        keys_dir=tmp_path / "keys", public_url=f"http://{HOST}:{port}", mqtt_host=HOST,
                        mqtt_port=mosquitto.port)
    config_file = tmp_path / "controller.toml"
    config_file.write_text(f'state_dir = "{settings.state_dir}"\ndatabase_url = "{settings.database_url}"\n'
                           f'keys_dir = "{settings.keys_dir}"\n')
    app = create_app(settings)
    served_app = ServedApp(app, port)
    served_app.start()
    agent: AgentProcess | None = None
    try:
        with app.state.ctx.session_factory() as session:
            _, admin = create_api_token(session, name="capture-admin", role="admin")
            _, viewer = create_api_token(session, name="capture-viewer", role="viewer")
            session.commit()
        answer = TestClient(app).post("/api/v1/enrollment-tokens", json={},
                                      headers={"Authorization": f"Bearer {admin}"})
        assert answer.status_code == 201, answer.text
        served = Served(f"http://{HOST}:{port}", app, config_file, viewer)
        device_id, _ = enroll(tmp_path / "device", served.url, str(answer.json()["token"]), requested_id=DEVICE)
        assert device_id == DEVICE
        # controller_url and the password come from the enrollment record; uploads every 0.3 s
        agent = AgentProcess(tmp_path, side, mosquitto.port, capture_upload_every_s=0.3)
        yield side, served, agent
    finally:
        if agent is not None:
            agent.kill()
            agent.notify.close()
        side.close()
        served_app.stop()


def assign(side: ControllerSide, targets: Sequence[SignedTarget], capture: A.CapturePolicy,
           gate: A.GatePolicy | None = None, probation_window_s: float = 0.5) -> int:
    """Like ControllerSide.assign, with a capture policy."""
    _, model, version, _ = targets[0].name.split("/")
    issued = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(seconds=5)
    a = A.Assignment(device_id=side.device_id, version=side.next_version, issued_at=issued,
                     expires_at=issued + timedelta(days=1), release=A.ReleaseRef(model, version),
                     targets=tuple(A.TargetPin(t.name, t.length, t.sha256) for t in targets),
                     gate=gate or A.GatePolicy(),
                     # Capture is under test, not latency: on a shared CPU a few-ms p99 swings several-fold.
                     probation=A.ProbationPolicy(window_s=probation_window_s, max_latency_p99_ratio=1000.0),
                     capture=capture, rollout_id="r-capture")
    side.next_version += 1
    side.publish_raw(director.sign_envelope(a, side.keys.signers("director"),
                                            side.keys.root_history("director")[1:]))
    return a.version


def committed(side: ControllerSide, agent: AgentProcess, version: int) -> None:
    def done() -> str | None:
        kinds = side.event_kinds(version)
        return next((k for k in ("committed", "failed", "rolled_back") if k in kinds), None)

    outcome = wait_for(done, 120, f"the outcome of assignment {version}", agent.log)
    failed = side.event("probation_failed", version) or side.event("failed", version)
    assert outcome == "committed", "; ".join(f"{k}={v}" for k, v in (failed.details if failed else {}).items()
                                             if not k.startswith("active."))


def counts_everywhere(side: ControllerSide, agent: AgentProcess, **expected: int) -> None:
    """The capture counters in the device's telemetry, in `edgefleet-agent status --json`, on /metrics."""
    def in_telemetry() -> bool:
        with side.lock:
            latest = next((b.capture for b in reversed(side.telemetry) if b.capture is not None), None)
        return latest is not None and all(getattr(latest, k) == v for k, v in expected.items())

    wait_for(in_telemetry, 30, f"telemetry with capture counts {expected}", agent.log)

    def in_status() -> bool:
        doc = agent.status()["capture"]
        figures = {**(doc["counters"] or {}), "pending": doc["pending"]}
        return all(figures.get(k) == v for k, v in expected.items())

    wait_for(in_status, 30, f"status with capture counts {expected}", agent.log)
    text = agent.metrics()
    assert f'edgefleet_capture_samples_total{{reason="random"}} {expected["captured_random"]}' in text
    assert f"edgefleet_capture_uploaded_total {expected['uploaded']}" in text


def infer_rows(agent: AgentProcess, model: SampleModel, rows: np.ndarray) -> None:
    """One request per row."""
    for row in rows:
        x = row.reshape(1, -1).astype(np.float32)
        body = {"inputs": [{"name": model.input_name, "shape": list(x.shape), "datatype": "FP32",
                            "data": x.ravel().tolist()}]}
        request = urllib.request.Request(f"{agent.url}/v2/models/digits/infer", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200


def shifted_classes(model: SampleModel) -> bytes:
    """The model with its class axis rolled by one: it disagrees with the original on every row."""
    proto = onnx.load(str(model.path))
    for init in proto.graph.initializer:
        array = numpy_helper.to_array(init)
        if array.shape[-1] == 10:
            init.CopyFrom(numpy_helper.from_array(np.roll(array, 1, axis=-1), init.name))
    buffer = io.BytesIO()
    onnx.save(proto, buffer)
    return buffer.getvalue()


def spool_empty(agent: AgentProcess) -> bool:
    return not list((agent.state_dir / "capture").glob("*.npz"))


def test_capture_policy_caps_uploads_the_off_switch_and_probation_disagreements(world: tuple[ControllerSide, Served, AgentProcess],
                                                        digits_mlp: SampleModel, tmp_path: Path) -> None:
    side, served, agent = world
    agent.start()
    wait_for(lambda: "online" in side.presence(), 60, "the agent's online presence", agent.log)
    targets = side.publish_release(digits_mlp, "1", 1)
    on = A.CapturePolicy(enabled=True, random_rate=1.0, max_samples_per_hour=CAP, max_bytes_per_day=10**7)
    committed(side, agent, assign(side, targets, on))

    inputs = digits_mlp.golden.inputs.astype(np.float32)
    first, second = inputs[:5], inputs[5:25]
    infer_rows(agent, digits_mlp, first)  # N = 5 < cap: all kept
    wait_for(lambda: len(served.samples()) == 5 and spool_empty(agent), 30, "5 samples uploaded", agent.log)
    infer_rows(agent, digits_mlp, second)  # 20 more: the hourly cap stops at 12 in all
    wait_for(lambda: len(served.samples()) >= CAP and spool_empty(agent), 30, f"{CAP} samples uploaded", agent.log)
    counts_everywhere(side, agent, captured_random=CAP, dropped_hourly_budget=25 - CAP, uploaded=CAP, pending=0)

    # Off switch (random_rate 1.0 notwithstanding): the same release, a new assignment.
    off = A.CapturePolicy(enabled=False, random_rate=1.0, max_samples_per_hour=100, max_bytes_per_day=10**7)
    committed(side, agent, assign(side, targets, off))
    muted = inputs[25:40]
    infer_rows(agent, digits_mlp, muted)
    # On again with room in the hour: only rows sent from now on are kept, none of the muted ones.
    again = A.CapturePolicy(enabled=True, random_rate=1.0, max_samples_per_hour=CAP + 3, max_bytes_per_day=10**7)
    committed(side, agent, assign(side, targets, again))
    last = inputs[40:46]
    infer_rows(agent, digits_mlp, last)
    wait_for(lambda: len(served.samples()) >= CAP + 3 and spool_empty(agent), 30, "3 more samples", agent.log)

    samples = served.samples()
    assert len(samples) == CAP + 3, [s["sample_id"] for s in samples]
    assert {(s["device_id"], s["model"], s["version"], s["variant"], s["reason"], s["status"])
            for s in samples} == {(DEVICE, "digits", "1", "ort-fp32.onnx", "random", "uploaded")}

    out = tmp_path / "dataset"
    result = CliRunner().invoke(samples_cli, ["export", "--model", "digits", "--out", str(out),
                                              "--config", str(served.config_file)])
    assert result.exit_code == 0, result.output
    arrays, manifest = load_dataset(out)
    assert manifest["count"] == CAP + 3 and not manifest["skipped"]
    exported = arrays[f"input.{digits_mlp.input_name}"]
    assert exported.shape == (CAP + 3, inputs.shape[1])
    expected = np.concatenate([inputs[:CAP], last[:3]])
    # The exported rows are exactly the first 12 requests' inputs and the first 3 after capture came back on.
    assert sorted(r.tobytes() for r in exported) == sorted(r.tobytes() for r in expected)
    assert not {r.tobytes() for r in exported} & {r.tobytes() for r in muted}
    scores = arrays[f"output.{digits_mlp.output_name}"]
    assert scores.shape[0] == CAP + 3 and np.all(np.isfinite(scores))
    assert "/samples/digits/" not in agent.log()  # presigned object URLs are never logged

    # Probation of a release that answers differently: only the rows the shadow saw disagree are kept.
    v2 = side.publish_release(digits_mlp, "2", 2, model_bytes=shifted_classes(digits_mlp))
    disagreement = A.CapturePolicy(enabled=True, capture_disagreement=True, max_samples_per_hour=100,
                                   max_bytes_per_day=10**7)
    lenient = A.GatePolicy(min_agreement=None, max_accuracy_drop=None, max_latency_regression_ratio=None)
    version = assign(side, v2, disagreement, gate=lenient, probation_window_s=4.0)
    wait_for(lambda: "activated" in side.event_kinds(version), 120, "v2 on probation", agent.log)
    sent = 0
    while "committed" not in side.event_kinds(version) and sent < 2000:
        infer_rows(agent, digits_mlp, inputs[sent % len(inputs)][None, :])
        sent += 1
    committed(side, agent, version)

    def disagreements() -> list[dict[str, Any]]:
        return [s for s in served.samples() if s["version"] == "2"] if spool_empty(agent) else []

    found = wait_for(disagreements, 30, "disagreement samples of v2", agent.log)
    assert {(s["reason"], s["variant"]) for s in found} == {("disagreement", "ort-fp32.onnx")}
    assert len(served.samples()) == CAP + 3 + len(found)  # v2's random_rate 0: nothing else kept


# -- the wiring alone (no services): backoff, the off switch, the policy across restarts ----------------


def wiring_config(tmp_path: Path, **extra: Any) -> DaemonConfig:
    raw = {"device_id": DEVICE, "state_dir": str(tmp_path / "state"), "repository_metadata_url": "http://127.0.0.1:9/m/",
           "repository_targets_url": "http://127.0.0.1:9/t/", "mqtt_password": "pw", **extra}
    return build_config(raw, tmp_path)


def spool_one(wiring: CaptureWiring) -> None:
    meta = SampleMeta(sample_id=secrets.token_hex(12), device_id=DEVICE, model="digits", version="1",
                      variant="ort-fp32.onnx", reason="random", confidence=0.9, captured_at_s=time.time(),
                      size_bytes=0, sha256="")
    wiring.spool.add(meta, b"not really an npz")


def test_uploads_back_off_while_the_controller_is_unreachable(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    port = free_port()  # nothing listens there
    wiring = CaptureWiring(wiring_config(tmp_path, controller_url=f"http://127.0.0.1:{port}",
                                         capture_upload_every_s=0.05, capture_upload_max_backoff_s=0.4))
    spool_one(wiring)
    wiring.start()
    try:
        wait_for(lambda: wiring.failed_rounds >= 4, 20, "four failed upload rounds")
        assert wiring.next_wait_s == 0.4  # 0.1, 0.2, 0.4, then held at the bound
    finally:
        wiring.stop()
    assert len(wiring.spool) == 1  # nothing lost while the controller is away
    assert "controller unreachable" in caplog.text and f":{port}" not in caplog.text


def test_wiring_policy_switch_and_restarts(tmp_path: Path) -> None:
    config = wiring_config(tmp_path)
    wiring = CaptureWiring(config)
    assert not wiring.policy.enabled  # nothing committed yet: capture off
    on = A.CapturePolicy(enabled=True, random_rate=0.5, max_samples_per_hour=10, max_bytes_per_day=10**6)
    issued = datetime.now(timezone.utc).replace(microsecond=0)
    committed_assignment = A.Assignment(device_id=DEVICE, version=7, issued_at=issued,
                                        expires_at=issued + timedelta(days=1), release=A.ReleaseRef("digits", "1"),
                                        targets=(A.TargetPin("models/digits/1/ort-fp32.onnx", 1, "0" * 64),),
                                        capture=on)
    wiring.begin(on)
    wiring.settle(committed_assignment)
    spool_one(wiring)
    restarted = CaptureWiring(config)
    assert restarted.policy == on and len(restarted.spool) == 1
    # An update whose policy is off deletes what waits at once, and failing does not bring it back.
    restarted.begin(A.CapturePolicy(enabled=False))
    assert len(restarted.spool) == 0
    restarted.settle(None)
    assert restarted.policy == on
    # A damaged record never switches capture on.
    (config.state_dir / "committed-assignment.json").write_text('{"schema": 1, "capture": {"enabled": true}}')
    spool_one(restarted)
    assert not CaptureWiring(config).policy.enabled and len(CaptureWiring(config).spool) == 0
