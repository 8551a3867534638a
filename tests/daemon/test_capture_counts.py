"""Sample-capture counters through the real capture pipeline (capturer, spool, upload thread) into the
three places that show them: the telemetry batch, `edgefleet-agent status` and the agent's /metrics.

    digits MLP (ONNX Runtime) rows ─▶ CaptureWiring ─▶ spool ─▶ upload rounds (nothing listens: failures)
                                          │ counts()
              TelemetryLoop batch ◀───────┼──────▶ add_metrics_routes /metrics
                                          ▼
                        capture-counts.json ─▶ status.collect / render
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from agent.capture.capturer import encode_row
from agent.daemon import status
from agent.daemon.capture import CaptureWiring
from agent.daemon.config import DaemonConfig, build_config
from agent.telemetry import TelemetryConfig, TelemetryLoop, TelemetrySpool
from agent.telemetry.prometheus import add_metrics_routes
from agent.telemetry.wire import SystemSample, decode
from manifests import assignment as A
from tests.daemon.fleet import wait_for
from tests.services import free_port

DEVICE = "edge-counts-1"


@dataclass
class Version:
    model: str = "digits"
    version: str = "1"
    variant: str = "ort-fp32.onnx"


class Channel:
    """A connected `TelemetryChannel` that keeps the payloads it is given."""

    def __init__(self) -> None:
        self.payloads: list[bytes] = []

    def is_connected(self) -> bool:
        return True

    def in_flight(self) -> int:
        return 0

    def publish(self, build_payload: Callable[[int, str], bytes]) -> int:
        self.payloads.append(build_payload(len(self.payloads) + 1, "0123456789abcdef"))
        return len(self.payloads)


class System:
    def sample(self) -> SystemSample:
        return SystemSample(cpu_pct=1.0)


def config_for(tmp_path: Path, **extra: Any) -> DaemonConfig:
    raw = {"device_id": DEVICE, "state_dir": str(tmp_path / "state"), "repository_metadata_url": "http://127.0.0.1:9/m/",
           "repository_targets_url": "http://127.0.0.1:9/t/", "mqtt_password": "pw", **extra}
    return build_config(raw, tmp_path)


def infer(model: Any, rows: np.ndarray) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(model.path), providers=["CPUExecutionProvider"])
    (scores,) = session.run([model.output_name], {model.input_name: rows})
    return {model.output_name: scores}


def scrape(wiring: CaptureWiring) -> str:
    async def get() -> str:
        app = web.Application()
        add_metrics_routes(app, capture=wiring.counts)
        async with TestClient(TestServer(app)) as client:
            response = await client.get("/metrics")
            assert response.status == 200
            return await response.text()

    return asyncio.run(get())


def test_capture_counts_reach_telemetry_status_and_metrics(tmp_path: Path, digits_mlp: Any) -> None:
    inputs = digits_mlp.golden.inputs[:20].astype(np.float32)
    outputs = infer(digits_mlp, inputs)
    config = config_for(tmp_path, controller_url=f"http://127.0.0.1:{free_port()}",  # nothing listens there
                        capture_upload_every_s=0.05, capture_upload_max_backoff_s=0.1)
    wiring = CaptureWiring(config)
    assert wiring.reported_counts() is None  # a device that counted nothing adds nothing to its batches
    wiring.begin(A.CapturePolicy(enabled=True, random_rate=1.0, max_samples_per_hour=8, max_bytes_per_day=10**7))
    wiring.start()
    try:
        capturer = wiring.get_capturer()
        capturer.observe(Version(), {digits_mlp.input_name: inputs}, outputs)  # 20 rows, an hourly cap of 8
        wait_for(lambda: wiring.counts().captured_random == 8, 20, "8 rows spooled")
        wait_for(lambda: wiring.counts().upload_rounds_failed >= 2, 20, "two failed upload rounds")
    finally:
        wiring.stop()
    counts = wiring.counts()
    sizes = [m.size_bytes for m in wiring.spool.pending()]
    assert (counts.captured_random, counts.captured_low_confidence, counts.captured_disagreement) == (8, 0, 0)
    assert counts.dropped_hourly_budget == 12 and counts.dropped_spool_full == counts.dropped_backlog == 0
    assert counts.pending == 8 and counts.pending_bytes == sum(sizes) == counts.spooled_bytes > 0
    assert counts.uploaded == 0 and counts.upload_rounds_failed >= 2
    assert counts.since_s <= time.time()

    # Telemetry: the counters ride in the batch and survive the controller's strict decoder.
    loop = TelemetryLoop(TelemetryConfig(DEVICE), TelemetrySpool(tmp_path / "telemetry"), Channel(), System(),
                         capture=wiring.reported_counts)
    loop.sample()
    assert loop.flush() == 1
    assert isinstance(loop.channel, Channel)
    payload = loop.channel.payloads[0]
    assert decode(payload).capture == counts
    assert json.loads(payload)["capture"]["dropped_hourly_budget"] == 12

    # /metrics
    text = scrape(wiring)
    assert 'edgefleet_capture_samples_total{reason="random"} 8' in text
    assert 'edgefleet_capture_samples_total{reason="disagreement"} 0' in text
    assert 'edgefleet_capture_dropped_total{cause="hourly_budget"} 12' in text
    assert f"edgefleet_capture_pending_bytes {sum(sizes)}" in text
    assert f"edgefleet_capture_upload_rounds_failed_total {counts.upload_rounds_failed}" in text

    # `edgefleet-agent status`: the counters the stopped daemon saved, the spool counted from its folder.
    doc = status.collect(config)["capture"]
    assert doc["counters"] == {k: v for k, v in counts.counters().items() if k not in ("pending", "pending_bytes")}
    assert (doc["pending"], doc["pending_bytes"], doc["from"]) == (8, sum(sizes), "last run")
    text = status.render_capture(doc)
    assert f"8 sample(s), {sum(sizes)} bytes waiting for upload" in text
    assert "8 captured (random 8, low_confidence 0, disagreement 0)" in text
    assert "12 dropped (hourly budget 12, daily budget 0, spool full 0, backlog 0)" in text

    # The off switch deletes what waits: counted as discarded, and the spool is empty for `status` too.
    restarted = CaptureWiring(config)
    restarted.begin(A.CapturePolicy(enabled=False))
    assert restarted.counts().discarded_by_policy == 8 and restarted.counts().pending == 0
    restarted.save_counts()
    doc = status.collect(config)["capture"]
    assert doc["counters"]["discarded_by_policy"] == 8 and doc["counters"]["captured_random"] == 0
    assert (doc["pending"], doc["pending_bytes"]) == (0, 0)


def test_spool_bound_and_uploads_are_counted(tmp_path: Path, digits_mlp: Any) -> None:
    """The byte bound's evictions count as `dropped_spool_full`; a status file that is not valid says so."""
    inputs = digits_mlp.golden.inputs[:6].astype(np.float32)
    outputs = infer(digits_mlp, inputs)
    size = len(encode_row({digits_mlp.input_name: inputs}, outputs, 0))  # every row's npz has this size
    config = config_for(tmp_path, capture_spool_max_bytes=2 * size + size // 2)
    wiring = CaptureWiring(config)
    wiring.begin(A.CapturePolicy(enabled=True, random_rate=1.0, max_samples_per_hour=100, max_bytes_per_day=10**7))
    try:
        wiring.get_capturer().observe(Version(), {digits_mlp.input_name: inputs}, outputs)
        wait_for(lambda: wiring.counts().captured_random == 6, 20, "6 rows written")
    finally:
        wiring.stop()
    counts = wiring.counts()
    assert counts.dropped_spool_full == 4 and counts.pending == 2
    assert counts.spooled_bytes == 6 * size and counts.pending_bytes == 2 * size

    (config.state_dir / "capture-counts.json").write_text(json.dumps({"since_s": 1.0, "uploaded": -3}))
    doc = status.collect(config)["capture"]
    assert "error" in doc["counters"] and doc["pending"] == 2
    assert "counters unreadable" in status.render_capture(doc)
