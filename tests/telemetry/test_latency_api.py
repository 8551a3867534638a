"""Latency queries: fleet percentiles from merged histograms equal the pooled raw percentiles to
bucket resolution; grouping, version comparison, per-device series, retention roll-ups, /metrics."""

from __future__ import annotations

import math
import random
from datetime import datetime, timedelta, timezone

from agent.metrics.histogram import BUCKETS_PER_DECADE, LatencyHistogram
from agent.telemetry.wire import ModelSample, Point, SystemSample, TelemetryBatch
from controller.db.models import Device
from controller.telemetry import IngestConfig, RetentionPolicy, TelemetryWriter, apply_retention
from controller.telemetry.service import TelemetryService
from tests.telemetry.conftest import ControllerEnv

BUCKET_RATIO = 10 ** (1 / BUCKETS_PER_DECADE)


def _now() -> float:
    """Read at each use: a module-level constant ages while the suite runs, and the latency API's
    default window (the last hour) would drop batches written relative to it."""
    return datetime.now(timezone.utc).timestamp()



def exact_quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def _batch(device: str, seq: int, start_s: float, version: str, latencies: list[float], hw: str,
           variant: str = "ort-fp32", errors: int = 0) -> TelemetryBatch:
    h = LatencyHistogram()
    for value in latencies:
        h.record(value)
    point = Point(start_s, start_s + 10, 10, SystemSample(cpu_pct=10.0, temps_c={"cpu": 50.0}),
                  (ModelSample("digits", version, variant, len(latencies), errors, h),))
    return TelemetryBatch(device, "a1b2c3d4e5f60718", seq, start_s + 10, (point,), hardware_class=hw)


def _fleet(rng: random.Random) -> tuple[list[TelemetryBatch], dict[str, list[float]]]:
    """Three devices with very different latency distributions, two versions."""
    batches: list[TelemetryBatch] = []
    pooled: dict[str, list[float]] = {"1": [], "2": []}
    profiles = {"pi-1": ("rpi4", 0.030, 0.2), "pi-2": ("rpi4", 0.045, 0.3), "jet-1": ("jetson", 0.004, 0.1)}
    for device, (hw, median_s, sigma) in profiles.items():
        for seq in range(12):
            version = "1" if seq < 6 else "2"
            scale = 1.0 if version == "1" else 0.8
            n = 400 if hw == "jetson" else 50  # the fast device serves 8x the requests
            values = [rng.lognormvariate(math.log(median_s * scale), sigma) for _ in range(n)]
            pooled[version].extend(values)
            batches.append(_batch(device, seq, _now() - 3000 + seq * 10, version, values, hw, errors=seq % 2))
    return batches, pooled


def test_fleet_percentiles_equal_pooled_raw_percentiles(api: ControllerEnv) -> None:
    rng = random.Random(11)
    batches, pooled = _fleet(rng)
    writer = TelemetryWriter(api.ctx.session_factory, IngestConfig("127.0.0.1", 1))
    assert writer.write(batches) == len(batches)
    r = api.client.get("/api/v1/telemetry/latency", params={"model": "digits", "group_by": "version"},
                       headers=api.auth("viewer"))
    assert r.status_code == 200, r.text
    groups = r.json()["groups"]
    for version, values in pooled.items():
        assert groups[version]["latency_count"] == len(values)
        for q in (0.5, 0.95, 0.99):
            got_s = groups[version][f"p{round(q * 100)}_ms"] / 1000
            want_s = exact_quantile(values, q)
            assert abs(math.log(got_s / want_s)) <= math.log(BUCKET_RATIO) + 1e-9, (version, q, got_s, want_s)
    # Averaging per-device p99s would be far off here (one fast device serves most requests).
    per_device = api.client.get("/api/v1/telemetry/latency", params={"model": "digits", "version": "1",
                                "group_by": "device_id"}, headers=api.auth("viewer")).json()["groups"]
    averaged = sum(g["p99_ms"] for g in per_device.values()) / len(per_device)
    assert abs(math.log(averaged / groups["1"]["p99_ms"])) > 2 * math.log(BUCKET_RATIO)


def test_grouping_compare_and_device_series(api: ControllerEnv) -> None:
    batches, pooled = _fleet(random.Random(5))
    TelemetryWriter(api.ctx.session_factory, IngestConfig("127.0.0.1", 1)).write(batches)
    viewer = api.auth("viewer")
    by_class = api.client.get("/api/v1/telemetry/latency", params={"group_by": "hardware_class"},
                              headers=viewer).json()["groups"]
    assert set(by_class) == {"rpi4", "jetson"}
    assert by_class["jetson"]["p50_ms"] < by_class["rpi4"]["p50_ms"]
    assert by_class["jetson"]["requests"] == 12 * 400

    cmp = api.client.get("/api/v1/telemetry/compare", params={"model": "digits", "baseline": "1", "candidate": "2"},
                         headers=viewer).json()
    assert cmp["baseline"]["latency_count"] == len(pooled["1"])
    assert 0.7 < cmp["ratio"]["p50_ms"] < 0.9  # version 2 is 0.8x as slow everywhere
    assert set(cmp["by_hardware_class"]) == {"rpi4", "jetson"}

    dev = api.client.get("/api/v1/telemetry/devices/pi-1/latency",
                         params={"model": "digits", "window_s": 3600, "step_s": 60}, headers=viewer).json()
    assert set(dev["by_version"]) == {"1", "2"}
    assert sum(s["requests"] for s in dev["series"]) == 12 * 50
    assert sum(s["errors"] for s in dev["series"]) == 6
    bad = api.client.get("/api/v1/telemetry/devices/pi-1/latency", params={"window_s": 400 * 86400, "step_s": 10},
                         headers=viewer)
    assert bad.status_code in (400, 422)
    assert api.client.get("/api/v1/telemetry/latency").status_code == 401


def test_retention_rolls_up_without_losing_a_request(api: ControllerEnv) -> None:
    rng = random.Random(3)
    day_s = 86400
    old = [_batch("pi-9", seq, _now() - 20 * day_s + seq * 10, "1",
                  [rng.uniform(0.01, 0.09) for _ in range(30)], "rpi4") for seq in range(30)]
    recent = [_batch("pi-9", 100 + seq, _now() - 2 * day_s + seq * 10, "1",
                     [rng.uniform(0.01, 0.09) for _ in range(30)], "rpi4") for seq in range(12)]
    factory = api.ctx.session_factory
    TelemetryWriter(factory, IngestConfig("127.0.0.1", 1)).write(old + recent)

    def figures() -> dict[str, float]:
        groups = api.client.get("/api/v1/telemetry/latency", params={"window_s": 30 * day_s},
                                headers=api.auth("viewer")).json()["groups"]
        return groups["all"]

    before = figures()
    done = apply_retention(factory, RetentionPolicy(), now=datetime.now(timezone.utc))
    assert done["model_raw_to_minute"] == 42 and done["model_minute_to_hour"] > 0
    after = figures()
    assert after == before  # merging histograms is exact: nothing moves
    from sqlalchemy import func, select

    from controller.telemetry.tables import ModelPointRow, SystemPointRow

    with factory() as db:
        resolutions = dict(db.execute(select(ModelPointRow.resolution_s, func.count())
                                      .group_by(ModelPointRow.resolution_s)).all())
        assert set(resolutions) == {60, 3600}
        assert db.scalar(select(func.count()).select_from(SystemPointRow)
                         .where(SystemPointRow.resolution_s < 60)) == 0
    deleted = apply_retention(factory, RetentionPolicy(hour_keep_s=10 * day_s), now=datetime.now(timezone.utc))
    assert deleted["hours_deleted"] > 0
    assert figures()["requests"] == 12 * 30


def test_controller_metrics_endpoint(api: ControllerEnv) -> None:
    with api.ctx.session_factory() as db:
        for i, (cls, online) in enumerate((("rpi4", True), ("rpi4", False), ("jetson", True))):
            db.add(Device(id=f"d-{i}", hardware_class=cls, cert_serial=f"s{i}", public_key_sha256="0" * 64,
                          mqtt_username=f"d-{i}", mqtt_password_hash="x", online=online, current_model="digits",
                          current_version="1", cert_not_after=datetime.now(timezone.utc) + timedelta(days=1)))
        db.commit()
    service = TelemetryService(api.ctx.session_factory, IngestConfig("127.0.0.1", 1))
    api.ctx.extras["telemetry"] = service
    batches, pooled = _fleet(random.Random(1))
    service.writer.write(batches)
    assert api.client.get("/metrics").status_code == 401
    r = api.client.get("/metrics", headers=api.auth("viewer"))
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    assert 'edgefleet_devices{hardware_class="rpi4",model="digits",version="1",online="true"} 1' in text
    assert 'edgefleet_devices{hardware_class="jetson",model="digits",version="1",online="true"} 1' in text
    assert f'edgefleet_fleet_latency_seconds_count{{model="digits",version="1"}} {len(pooled["1"])}' in text
    assert f'edgefleet_fleet_latency_seconds_bucket{{model="digits",version="2",le="+Inf"}} {len(pooled["2"])}' in text
    assert "edgefleet_telemetry_batches_total 36" in text


def test_a_point_repeated_in_a_later_batch_is_stored_once(api: ControllerEnv) -> None:
    """A device that crashed between handing points to its outbox and removing them from its spool
    sends those points again under a new sequence number: the batch is new, the point is not."""
    writer = TelemetryWriter(api.ctx.session_factory, IngestConfig("127.0.0.1", 1))
    first = _batch("pi-7", 0, _now() - 100, "1", [0.01] * 5, "rpi4")
    again = TelemetryBatch("pi-7", first.stream, 1, _now(), first.points + _batch("pi-7", 1, _now() - 90, "1", [0.02] * 3,
                                                                              "rpi4").points, hardware_class="rpi4")
    assert writer.write([first]) == 1
    assert writer.write([again]) == 1  # the batch is new ...
    groups = api.client.get("/api/v1/telemetry/latency", params={"model": "digits"},
                            headers=api.auth("viewer")).json()["groups"]
    assert groups["all"]["requests"] == 8  # ... but its repeated point is counted once
    assert writer.write([again]) == 0 and writer.stats["duplicates"] == 1
