"""Agent side: thermal zones of Jetson / Raspberry Pi / x86 layouts, the spool's roll-ups and bound,
the wire format's checks, the loop's counter deltas, and the agent's Prometheus route."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from agent.metrics.histogram import LatencyHistogram
from agent.telemetry import TelemetryConfig, TelemetryLoop, TelemetrySpool, read_temperatures
from agent.telemetry.capture_counts import CaptureCounts
from agent.telemetry.prometheus import add_metrics_routes
from agent.telemetry.wire import (
    ModelSample,
    Point,
    SystemSample,
    TelemetryBatch,
    TelemetryWireError,
    batch_from_dict,
    decode,
    encode,
    fast_batch,
    point_to_dict,
)
from tests.telemetry.conftest import FakeModels, FakeSystem


def _zones(root: Path, zones: list[tuple[str, str]]) -> None:
    for i, (kind, temp) in enumerate(zones):
        zone = root / f"sys/class/thermal/thermal_zone{i}"
        zone.mkdir(parents=True)
        (zone / "type").write_text(kind + "\n")
        (zone / "temp").write_text(temp + "\n")


def test_jetson_thermal_zones(tmp_path: Path) -> None:
    _zones(tmp_path, [("CPU-therm", "41500"), ("GPU-therm", "39000"), ("PMIC-Die", "100000"),
                      ("thermal-fan-est", "40400"), ("CPU-therm", "42000"), ("Tboard_tegra", "-40000"),
                      ("AO-therm", "garbage")])
    temps = read_temperatures(tmp_path)
    assert temps == {"CPU-therm": 41.5, "GPU-therm": 39.0, "PMIC-Die": 100.0, "thermal-fan-est": 40.4,
                     "CPU-therm#1": 42.0}


def test_raspberry_pi_thermal_zone(tmp_path: Path) -> None:
    _zones(tmp_path, [("cpu-thermal", "48312")])
    assert read_temperatures(tmp_path) == {"cpu-thermal": 48.3}


def test_hwmon_fallback_and_empty(tmp_path: Path) -> None:
    assert read_temperatures(tmp_path) == {}
    hwmon = tmp_path / "sys/class/hwmon/hwmon2"
    hwmon.mkdir(parents=True)
    (hwmon / "name").write_text("coretemp\n")
    (hwmon / "temp1_input").write_text("55000\n")
    (hwmon / "temp1_label").write_text("Package id 0\n")
    (hwmon / "temp2_input").write_text("53000\n")
    assert read_temperatures(tmp_path) == {"coretemp-Package_id_0": 55.0, "coretemp-temp2": 53.0}


def _point(start_s: float, requests: int, latency_s: float = 0.01) -> Point:
    h = LatencyHistogram()
    for _ in range(requests):
        h.record(latency_s)
    return Point(start_s, start_s + 10, 10, SystemSample(cpu_pct=float(requests), temps_c={"cpu": 40.0 + requests}),
                 (ModelSample("m", "1", "v", requests, 0, h),))


def test_spool_rolls_up_before_dropping_and_counts_drops(tmp_path: Path) -> None:
    spool = TelemetrySpool(tmp_path / "spool", max_points=20)
    for i in range(200):  # 2000 s of 10 s points: 34 minutes
        spool.add(_point(1_700_000_000 + i * 10, requests=1 + i % 5))
    points = spool.points()
    assert len(points) <= 20
    assert spool.rolled_up_points > 0 and spool.dropped_points == 0
    assert sum(m.requests for p in points for m in p.models) == sum(1 + i % 5 for i in range(200))
    assert sum(m.latency.count for p in points for m in p.models) == sum(1 + i % 5 for i in range(200))
    assert {p.resolution_s for p in points} >= {60}
    assert max(p.system.temps_c["cpu"] for p in points) == 45.0  # peaks survive roll-ups
    # Reopen: same points and counters.
    again = TelemetrySpool(tmp_path / "spool", max_points=20)
    assert [point_to_dict(p) for p in again.points()] == [point_to_dict(p) for p in points]
    assert again.rolled_up_points == spool.rolled_up_points
    # Days offline: even hours no longer fit, the oldest points go and are counted.
    for i in range(20_000):
        again.add(_point(1_700_100_000 + i * 3600, requests=1))
        if again.dropped_points:
            break
    assert again.dropped_points > 0 and len(again) <= 20


def test_spool_survives_a_torn_last_line(tmp_path: Path) -> None:
    spool = TelemetrySpool(tmp_path, max_points=50)
    for i in range(3):
        spool.add(_point(1_700_000_000 + i * 10, 2))
    with open(tmp_path / "points.jsonl", "a") as f:
        f.write('{"start_s": 1, "end')
    again = TelemetrySpool(tmp_path, max_points=50)
    assert len(again) == 3 and again.corrupt_lines == 1


def test_wire_round_trip_and_rejections() -> None:
    batch = TelemetryBatch("dev-1", "0123456789abcdef", 7, 1.0, (_point(0, 3),), hardware_class="rpi4",
                           dropped_points=2)
    data = encode(batch)
    assert json.loads(encode(decode(data))) == json.loads(data)
    body = json.loads(data)
    for mutate in (
        lambda b: b.update(points=[]),
        lambda b: b.update(seq=True),
        lambda b: b.update(extra=1),
        lambda b: b["points"][0].update(end_s=-1),
        lambda b: b["points"][0]["models"][0].update(errors=99),
        lambda b: b["points"][0]["models"][0]["latency"].update(count=1000),
        lambda b: b["points"][0]["system"]["temps_c"].update(cpu=9999),
        lambda b: b.update(device_id="../x"),
    ):
        bad = json.loads(json.dumps(body))
        mutate(bad)
        with pytest.raises(TelemetryWireError):
            decode(json.dumps(bad).encode())


def test_capture_counts_on_the_wire() -> None:
    counts = CaptureCounts(since_s=1_700_000_000.5, captured_random=3, captured_disagreement=2,
                           dropped_hourly_budget=9, dropped_spool_full=1, uploaded=4, upload_failures=1,
                           upload_rounds_failed=2, spooled_bytes=5120, pending=1, pending_bytes=1024)
    batch = TelemetryBatch("dev-1", "0123456789abcdef", 7, 1.0, (_point(0, 3),), capture=counts)
    data = encode(batch)
    body = json.loads(data)
    fast, reference = fast_batch(json.loads(data)), batch_from_dict(json.loads(data))
    assert fast is not None and fast.capture == reference.capture == decode(data).capture == counts
    assert encode(fast) == encode(reference) == encode(decode(data))
    # Without counts the batch is byte-for-byte what controllers that predate the field accept.
    assert "capture" not in json.loads(encode(TelemetryBatch("dev-1", "0123456789abcdef", 7, 1.0, (_point(0, 3),))))
    for mutate, field in (
        (lambda c: c.update(extra=1), "unexpected fields ['extra']"),
        (lambda c: c.pop("uploaded"), "missing fields ['uploaded']"),
        (lambda c: c.update(uploaded=-1), "batch.capture.uploaded"),
        (lambda c: c.update(pending=True), "batch.capture.pending"),
        (lambda c: c.update(spooled_bytes=1.5), "batch.capture.spooled_bytes"),
        (lambda c: c.update(since_s="yesterday"), "batch.capture.since_s"),
        (lambda c: c.update(since_s=-1.0), "batch.capture.since_s"),
    ):
        bad = json.loads(json.dumps(body))
        mutate(bad["capture"])
        assert fast_batch(bad) is None
        with pytest.raises(TelemetryWireError, match=field.replace("[", r"\[").replace("]", r"\]")):
            decode(json.dumps(bad).encode())
    for not_an_object in ([], "counts", 3):
        with pytest.raises(TelemetryWireError, match="batch.capture must be an object"):
            decode(json.dumps({**body, "capture": not_an_object}).encode())


class OfflineChannel:
    def __init__(self) -> None:
        self.connected = False
        self.payloads: list[bytes] = []

    def is_connected(self) -> bool:
        return self.connected

    def in_flight(self) -> int:
        return 0

    def publish(self, build_payload) -> int:  # type: ignore[no-untyped-def]
        self.payloads.append(build_payload(len(self.payloads), "0123456789abcdef"))
        return len(self.payloads) - 1


def test_loop_sends_counter_deltas_and_handles_a_reload(tmp_path: Path) -> None:
    models, channel = FakeModels(), OfflineChannel()
    ticks = iter(range(1_700_000_000, 1_800_000_000, 10))
    loop = TelemetryLoop(TelemetryConfig("dev-1", sample_every_s=10, points_per_batch=3), TelemetrySpool(tmp_path),
                         channel, FakeSystem(), models, clock=lambda: float(next(ticks)))
    models.serve([0.01] * 5)
    loop.sample()
    models.serve([0.02] * 7, errors=2)
    loop.sample()
    models.requests, models.errors, models.latency = 0, 0, LatencyHistogram()  # reloaded: counters restart
    models.serve([0.03] * 4)
    loop.sample()
    loop.sample()  # idle: no model entry
    assert loop.flush() == 0
    channel.connected = True
    assert loop.flush() == 2 and len(loop.spool) == 0
    points = [p for payload in channel.payloads for p in decode(payload).points]
    assert [[(m.requests, m.errors, m.latency.count) for m in p.models] for p in points] == [
        [(5, 0, 5)], [(7, 2, 7)], [(4, 0, 4)], []]


def test_agent_metrics_route(tmp_path: Path) -> None:
    models = FakeModels()
    models.serve([0.001, 0.002, 0.5], errors=1)
    loop = TelemetryLoop(TelemetryConfig("dev-1"), TelemetrySpool(tmp_path), OfflineChannel(), FakeSystem(), models)

    async def scrape() -> str:
        app = web.Application()
        add_metrics_routes(app, models=models, system=FakeSystem(), telemetry=loop)
        async with TestClient(TestServer(app)) as client:
            response = await client.get("/metrics")
            assert response.status == 200
            return await response.text()

    text = asyncio.run(scrape())
    labels = 'model="digits",version="1",variant="ort-fp32"'
    assert f"edgefleet_model_requests_total{{{labels}}} 3" in text
    assert f"edgefleet_model_errors_total{{{labels}}} 1" in text
    assert f'edgefleet_model_latency_seconds_bucket{{{labels},le="+Inf"}} 3' in text
    assert f'edgefleet_model_latency_seconds_bucket{{{labels},le="0.01"}} 2' in text
    assert 'edgefleet_system_temperature_celsius{zone="cpu-thermal"} 51.5' in text
    assert "edgefleet_telemetry_spooled_points 0" in text
