"""Agents' sample-capture counters on the controller: stored with each batch (COPY on PostgreSQL,
executemany on SQLite, and the conflict path), per-device totals across daemon restarts on the device
API and the dashboard's data, per-model gauges on /metrics, and kept through batch retention."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from agent.metrics.histogram import LatencyHistogram
from agent.telemetry.capture_counts import CaptureCounts
from agent.telemetry.wire import ModelSample, Point, SystemSample, TelemetryBatch, encode
from controller.dashboard import data as dashboard_data
from controller.db.models import Device
from controller.telemetry import (
    IngestConfig,
    RetentionPolicy,
    TelemetrySubscriber,
    TelemetryWriter,
    apply_retention,
)
from controller.telemetry.tables import TelemetryBatchRow
from tests.telemetry.conftest import ControllerEnv

NOW = datetime.now(timezone.utc).timestamp()
RUN_1 = NOW - 7200.0  # the agent's daemon started here ...
RUN_2 = NOW - 600.0  # ... and again here: its counters start over
STREAM = "0a1b2c3d4e5f6071"


def _counts(since_s: float, n: int) -> CaptureCounts:
    """Counters that grow with `n`, each by its own step so that a mixed-up field shows."""
    return CaptureCounts(since_s=since_s, captured_random=3 * n, captured_low_confidence=n,
                         dropped_hourly_budget=2 * n, dropped_spool_full=n // 2, uploaded=2 * n,
                         upload_failures=n // 3, upload_rounds_failed=n // 4, spooled_bytes=1000 * n,
                         pending=n % 5, pending_bytes=100 * (n % 5))


def _batch(device: str, seq: int, capture: CaptureCounts | None, stream: str = STREAM) -> TelemetryBatch:
    h = LatencyHistogram()
    h.record(0.004)
    start_s = NOW - 3000 + seq * 10
    point = Point(start_s, start_s + 10, 10, SystemSample(cpu_pct=5.0),
                  (ModelSample("digits", "1", "ort-fp32", 1, 0, h),))
    return TelemetryBatch(device, stream, seq, start_s + 10, (point,), hardware_class="rpi4", capture=capture)


def _stored(factory: sessionmaker[Session], device: str) -> dict[int, dict[str, Any] | None]:
    with factory() as db:
        return {r.seq: r.capture for r in db.scalars(select(TelemetryBatchRow)
                                                      .where(TelemetryBatchRow.device_id == device))}


def _add_device(factory: sessionmaker[Session], device_id: str, model: str | None = "digits") -> None:
    with factory() as db:
        db.add(Device(id=device_id, hardware_class="rpi4", cert_serial=f"s-{device_id}", public_key_sha256="0" * 64,
                      mqtt_username=device_id, mqtt_password_hash="x", online=True, current_model=model,
                      current_version="1" if model else None,
                      cert_not_after=datetime.now(timezone.utc) + timedelta(days=1)))
        db.commit()


def _restarted_device(writer: TelemetryWriter, device: str) -> None:
    """Run 1 reaches n=9 (its batches delivered out of order, its last one only after run 2's), an old
    agent build sends none in between, and run 2 reaches n=4 (also out of order)."""
    run_1 = [_batch(device, seq, _counts(RUN_1, seq)) for seq in range(10)]
    assert writer.write(run_1[:4] + run_1[7:9]) == 6
    assert writer.write(run_1[4:7]) == 3  # the outbox drained late: older counters after newer ones
    assert writer.write([_batch(device, 10, None)]) == 1
    run_2 = {seq: _batch(device, seq, _counts(RUN_2, seq - 11)) for seq in range(11, 16)}
    assert writer.write([run_2[11], run_2[12], run_2[15]]) == 3
    assert writer.write([run_2[13], run_2[14]]) == 2  # run 2's highest seq is not its last stored either
    assert writer.write(run_1[9:]) == 1  # arrives after the new run's: neither newest nor lost


def test_capture_is_stored_per_batch_on_the_fast_and_the_conflict_path(session_factory: sessionmaker[Session]) -> None:
    writer = TelemetryWriter(session_factory, IngestConfig("127.0.0.1", 1))
    assert writer.write([_batch("dev-a", 0, _counts(RUN_1, 1)), _batch("dev-a", 1, None)]) == 2
    # A redelivered batch in the flush sends it down the conflict path (ON CONFLICT DO NOTHING).
    assert writer.write([_batch("dev-a", 0, _counts(RUN_1, 1)), _batch("dev-a", 2, _counts(RUN_1, 2))]) == 1
    assert writer.stats["conflict_retries"] == 1
    stored = _stored(session_factory, "dev-a")
    assert stored == {0: _counts(RUN_1, 1).to_dict(), 1: None, 2: _counts(RUN_1, 2).to_dict()}
    with session_factory() as db:  # an old agent's batch holds SQL NULL, not a JSON null
        assert db.scalar(select(TelemetryBatchRow.seq).where(TelemetryBatchRow.device_id == "dev-a",
                                                             TelemetryBatchRow.capture.is_(None))) == 1


def test_capture_arrives_through_the_wire_decoder_on_the_writer_thread(
        session_factory: sessionmaker[Session]) -> None:
    writer = TelemetryWriter(session_factory, IngestConfig("127.0.0.1", 1, max_delay_s=0.05))
    subscriber = TelemetrySubscriber(IngestConfig("127.0.0.1", 1), writer)
    writer.start()
    try:
        topic = "edgefleet/v1/dev-w/telemetry"
        writer.submit(topic, encode(_batch("dev-w", 0, _counts(RUN_2, 7))))
        writer.submit(topic, encode(_batch("dev-w", 1, None)))
        bad = encode(_batch("dev-w", 2, _counts(RUN_2, 8))).replace(b'"uploaded":16', b'"uploaded":-1')
        assert bad != encode(_batch("dev-w", 2, _counts(RUN_2, 8)))
        writer.submit(topic, bad)
        assert writer.drain(20)
    finally:
        writer.stop()
    assert subscriber.stats["rejected"] == 1 and "uploaded" in subscriber.last_drop
    assert _stored(session_factory, "dev-w") == {0: _counts(RUN_2, 7).to_dict(), 1: None}


def test_device_api_sums_each_runs_last_counters_across_a_restart(api: ControllerEnv) -> None:
    factory = api.ctx.session_factory
    _add_device(factory, "pi-1")
    _add_device(factory, "pi-old")
    writer = TelemetryWriter(factory, IngestConfig("127.0.0.1", 1))
    _restarted_device(writer, "pi-1")
    writer.write([_batch("pi-old", 0, None)])
    viewer = api.auth("viewer")

    r = api.client.get("/api/v1/devices/pi-1/capture", headers=viewer)
    assert r.status_code == 200, r.text
    body = r.json()
    latest = dict(body["latest"])
    latest.pop("received_at")
    assert latest == _counts(RUN_2, 4).to_dict()
    assert [(run["since_s"], run["batches"]) for run in body["runs"]] == [(RUN_1, 10), (RUN_2, 5)]
    assert body["runs"][0]["counts"] == {k: v for k, v in _counts(RUN_1, 9).counters().items()
                                         if k not in ("pending", "pending_bytes")}
    run_1, run_2 = _counts(RUN_1, 9), _counts(RUN_2, 4)
    assert body["uploaded_total"] == run_1.uploaded + run_2.uploaded == 26
    assert body["upload_failures_total"] == run_1.upload_failures + run_2.upload_failures == 4
    assert body["totals"]["captured_random"] == 27 + 12
    assert body["totals"]["spooled_bytes"] == 13_000
    assert "pending" not in body["totals"]  # a gauge: the newest value only, never summed

    old = api.client.get("/api/v1/devices/pi-old/capture", headers=viewer).json()
    assert old["latest"] is None and old["runs"] == [] and old["uploaded_total"] == 0
    assert api.client.get("/api/v1/devices/nope/capture", headers=viewer).status_code == 404
    assert api.client.get("/api/v1/devices/pi-1/capture").status_code == 401

    with factory() as db:
        view = dashboard_data.device(db, "pi-1")
        assert view is not None and view["capture"]["runs"] == 2
        rows = {row["name"]: row for row in view["capture"]["rows"]}
        assert rows["uploaded"] == {"name": "uploaded", "current": 8, "total": 26}
        assert rows["pending"] == {"name": "pending", "current": 4, "total": None}
        old_view = dashboard_data.device(db, "pi-old")
        assert old_view is not None and old_view["capture"] is None


def test_metrics_sum_current_runs_by_model(api: ControllerEnv) -> None:
    factory = api.ctx.session_factory
    for device, model in (("pi-1", "digits"), ("pi-2", "digits"), ("pi-3", "faces"), ("pi-4", None)):
        _add_device(factory, device, model)
    writer = TelemetryWriter(factory, IngestConfig("127.0.0.1", 1))
    _restarted_device(writer, "pi-1")  # its current run: n=4
    writer.write([_batch("pi-2", 0, _counts(RUN_1, 6))])
    writer.write([_batch("pi-3", 0, _counts(RUN_1, 2))])
    writer.write([_batch("pi-4", 0, None)])  # sends no counters: absent, not zero
    r = api.client.get("/metrics", headers=api.auth("viewer"))
    assert r.status_code == 200
    lines = {line for line in r.text.splitlines() if line.startswith("edgefleet_capture")}
    assert 'edgefleet_capture_samples{model="digits",count="uploaded"} 20' in lines  # 8 + 12, not run 1's 18
    assert 'edgefleet_capture_samples{model="digits",count="pending"} 5' in lines  # 4 + 1
    assert 'edgefleet_capture_bytes{model="digits",count="spooled_bytes"} 10000' in lines
    assert 'edgefleet_capture_samples{model="faces",count="captured_random"} 6' in lines
    assert not any('model=""' in line for line in lines)
    assert not any("spooled_bytes" in line for line in lines if line.startswith("edgefleet_capture_samples"))
    assert "# TYPE edgefleet_capture_samples gauge" in r.text


def test_retention_keeps_each_runs_newest_record(api: ControllerEnv) -> None:
    factory = api.ctx.session_factory
    _add_device(factory, "pi-1")
    writer = TelemetryWriter(factory, IngestConfig("127.0.0.1", 1))
    _restarted_device(writer, "pi-1")
    viewer = api.auth("viewer")
    before = api.client.get("/api/v1/devices/pi-1/capture", headers=viewer).json()
    later = datetime.now(timezone.utc) + timedelta(days=8)
    deleted = apply_retention(factory, RetentionPolicy(), now=later)
    assert deleted["batches_deleted"] == 16 - 2
    assert set(_stored(factory, "pi-1")) == {9, 15}  # each run's highest seq, not the one stored last
    after = api.client.get("/api/v1/devices/pi-1/capture", headers=viewer).json()
    assert after["totals"] == before["totals"] and after["latest"] == before["latest"]
    assert apply_retention(factory, RetentionPolicy(), now=later)["batches_deleted"] == 0
