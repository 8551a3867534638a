"""A live controller (uvicorn on a free port) holding a small fleet, and a headless Chromium to look at it.

The fleet is written through the registry's own functions (`record_status`, `record_event`), telemetry
through the ingest writer, and a rollout through the real rollout engine with fakes of its two ports
(`FleetView`, `Assigner`), so the pages render what the controller would hold after real traffic.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from agent.metrics.histogram import LatencyHistogram
from agent.telemetry import wire as twire
from agent.telemetry.capture_counts import CaptureCounts
from controller.app import create_app
from controller.auth import create_api_token
from controller.db.base import utcnow
from controller.db.models import Device, DeviceTag, ModelRelease, Variant
from controller.devices import record_event, record_presence, record_status
from controller.rollouts import DeviceInfo, FileRolloutStore, RolloutEngine, RolloutSpec, Selector, WaveSpec
from controller.samples.tables import SampleRow
from controller.settings import Settings
from controller.telemetry.ingest import IngestConfig, TelemetryWriter
from manifests.assignment import ReleaseRef
from manifests.keyring import Keyring
from tests.service_process import free_port

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "dashboard"
FLEET = [
    ("orin-1", "jetson-orin", "ort-fp32-cuda"), ("orin-2", "jetson-orin", "ort-fp32-cuda"),
    ("pi5-1", "rpi5", "ort-int8"), ("pi5-2", "rpi5", "ort-int8"),
    ("nuc-1", "intel-x86", "openvino-fp32"), ("nuc-2", "intel-x86", "openvino-fp32"),
]


class FleetOf:
    """FleetView port: the seeded devices, all online, on digits 1."""

    def __init__(self, devices: list[tuple[str, str]]) -> None:
        self.devices = devices

    def targeted(self, selector: Selector) -> dict[str, DeviceInfo]:
        infos = {d: DeviceInfo(d, online=True, tags=frozenset({"lab"}), hardware_class=hw,
                               active_release=ReleaseRef("digits", "1"))
                 for d, hw in self.devices}
        return {d: i for d, i in infos.items() if selector.matches(i)}


class RecordingAssigner:
    """Assigner port: remembers what it was asked to publish."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str]] = []

    def assign(self, device_id: str, release: ReleaseRef, rollout_id: str, *, rollback: bool = False) -> int:
        self.calls.append((device_id, release.version, rollout_id))
        return len(self.calls)

    def flush(self, timeout_s: float = 60.0) -> None:
        return None


@dataclass
class LiveController:
    url: str
    app: Any
    tokens: dict[str, str]
    engine: RolloutEngine
    assigner: RecordingAssigner

    @property
    def ctx(self) -> Any:
        return self.app.state.ctx


def _seed(ctx: Any) -> None:
    now = utcnow()
    with ctx.session_factory() as session:
        for index, (device_id, hw, _variant) in enumerate(FLEET):
            session.add(Device(id=device_id, hardware_class=hw, hardware_profile={"arch": "aarch64", "cpu_count": 4},
                               cert_serial=f"serial-{index}", cert_not_after=now + timedelta(days=300),
                               public_key_sha256="0" * 64, mqtt_username=device_id, mqtt_password_hash="x",
                               tags=[DeviceTag(tag="lab")]))
        release = ModelRelease(name="digits", version="1", release_counter=1, status="published", progress=1.0,
                               model_key="k", golden_key="g", model_sha256="0" * 64, model_bytes=1000,
                               created_by="test")
        release.variants = [
            Variant(variant_id="ort-fp32", runtime="onnxruntime", precision="fp32", target_path="t1",
                    sha256="1" * 64, length=40000, accuracy=0.9711, agreement=1.0, latency_ms=0.05),
            Variant(variant_id="ort-int8", runtime="onnxruntime", precision="int8", target_path="t2",
                    sha256="2" * 64, length=14000, accuracy=0.9622, agreement=0.98, latency_ms=0.04),
        ]
        session.add(release)
        session.commit()
        for device_id, hw, variant in FLEET:
            if device_id != "nuc-2":
                record_presence(session, device_id, online=True)
            record_status(session, device_id, model="digits", version="1", variant=variant,
                          update_state="idle", last_error=None)
            record_event(session, device_id, "gate_passed", {
                "model": "digits", "version": "1", "rollout_id": "r-v1", "reason": None,
                "details": {"candidate": variant, "hardware_class": hw, "accuracy": 0.97, "latency_p50_ms": 0.08,
                            "latency_p95_ms": 0.12, "peak_rss_mb": 61.5, "reasons": ""}})
        for i, reason in enumerate(("random", "random", "low_confidence")):
            session.add(SampleRow(device_id="orin-1", sample_id=f"s{i}", model="digits", version="1",
                                  variant="ort-fp32-cuda", reason=reason, confidence=0.4, captured_at=now,
                                  size_bytes=300, sha256="3" * 64, object_key=f"samples/orin-1/s{i}",
                                  status="uploaded"))
        record_event(session, "pi5-1", "gate_failed", {
            "model": "digits", "version": "3", "rollout_id": "r-v3", "reason": "gate_failed",
            "details": {"candidate": "ort-int8", "hardware_class": "rpi5", "accuracy": 0.11,
                        "latency_p50_ms": 0.09, "reasons": "accuracy 0.110 below 0.900"}})
        session.commit()
    # a synthetic history: its telemetry must not count as nuc-2 being alive now
    writer = TelemetryWriter(ctx.session_factory, IngestConfig(host="127.0.0.1", port=1, mark_seen=False))
    start = time.time() - 600
    batches = []
    for seq, (device_id, hw, variant) in enumerate(FLEET):
        points = []
        for minute in range(10):
            h = LatencyHistogram()
            for i in range(50):
                h.record((0.0004 if hw == "jetson-orin" else 0.001) * (1 + (i % 10) / 10 + minute / 20))
            version = "1" if minute < 6 else "2"
            points.append(twire.Point(start + minute * 60, start + minute * 60 + 60, 60, twire.SystemSample(cpu_pct=10.0),
                                      (twire.ModelSample("digits", version, variant, 50, 0, h),)))
        capture = (CaptureCounts(since_s=start, captured_random=2, captured_low_confidence=1, uploaded=3, pending=1)
                   if device_id == "orin-1" else None)
        batches.append(twire.TelemetryBatch(device_id, "ab" * 8, seq + 1, time.time(), tuple(points), hardware_class=hw,
                                            capture=capture))
    # orin-1's agent ran once before (its counters started over at `start`): 5 uploaded in that run.
    batches.append(twire.TelemetryBatch("orin-1", "ab" * 8, 100, start - 60, (), hardware_class="jetson-orin",
                                        capture=CaptureCounts(since_s=start - 7200, uploaded=5, captured_random=5)))
    assert writer.write(batches) == len(batches)
    with ctx.session_factory() as session:  # the version change the chart marks
        record_status(session, "orin-1", model="digits", version="2", variant="ort-fp32-cuda",
                      update_state="idle", last_error=None)
        record_presence(session, "nuc-2", online=False)  # its last will, after its last status
        session.commit()


@pytest.fixture
def live_controller(tmp_path: Path) -> Iterator[LiveController]:
    port = free_port()
    Keyring.create(tmp_path / "state" / "keys")
    settings = Settings(state_dir=tmp_path / "state", public_url=f"http://127.0.0.1:{port}", port=port,
                        build_variants=("onnxruntime-fp32",))
    app = create_app(settings)
    assigner = RecordingAssigner()
    engine = RolloutEngine(FileRolloutStore(tmp_path / "rollouts"), FleetOf([(d, hw) for d, hw, _ in FLEET]), assigner)
    app.state.ctx.extras["rollout_engine"] = engine
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "controller did not start"
        time.sleep(0.05)
    tokens = {}
    with app.state.ctx.session_factory() as session:
        for role in ("viewer", "operator"):
            _, tokens[role] = create_api_token(session, name=f"ui-{role}", role=role)
        session.commit()
    _seed(app.state.ctx)
    spec = RolloutSpec(ReleaseRef("digits", "2"), Selector(tags=frozenset({"lab"})),
                       (WaveSpec(count=1, soak_s=3600), WaveSpec(percent=100, soak_s=60)))
    engine.create("r-v2", spec, actor="test")
    engine.step()
    try:
        yield LiveController(f"http://127.0.0.1:{port}", app, tokens, engine, assigner)
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists() and shutil.which("chromium") is None:
        pytest.skip("needs Debian's chromium at /usr/bin/chromium (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs the playwright Python package")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium"),
                              args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        try:
            yield b
        finally:
            b.close()
