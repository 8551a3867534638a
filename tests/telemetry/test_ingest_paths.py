"""The ingest writer's paths: decode on the writer thread, the conflict path of a flush, a batch the
database cannot hold, and the chunked socket reads of the subscriber's client."""

from __future__ import annotations

import threading
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from agent.metrics.histogram import LatencyHistogram
from agent.telemetry.wire import ModelSample, Point, SystemSample, TelemetryBatch, encode
from controller.telemetry import IngestConfig, TelemetrySubscriber, TelemetryWriter
from controller.telemetry.reader import ChunkedReadClient
from controller.telemetry.tables import ModelPointRow, SystemPointRow, TelemetryBatchRow
from tests.services import Mosquitto, wait_until

T0 = 1_700_000_000.0


def _batch(device_id: str, seq: int, start_s: float, model: str = "digits", requests: int = 3) -> TelemetryBatch:
    h = LatencyHistogram()
    for i in range(requests):
        h.record(0.001 * (i + 1))
    point = Point(start_s, start_s + 10, 10, SystemSample(cpu_pct=None, temps_c={"zone\\a\tb": 40.5}),
                  (ModelSample(model, "1", "ort-fp32", requests, 0, h),))
    return TelemetryBatch(device_id, "00000000abcdef01", seq, start_s + 10, (point,), hardware_class="rpi4")


def _counts(factory: sessionmaker[Session]) -> tuple[int, int, int, int]:
    with factory() as db:
        return (db.scalar(select(func.count()).select_from(TelemetryBatchRow)) or 0,
                db.scalar(select(func.count()).select_from(SystemPointRow)) or 0,
                db.scalar(select(func.count()).select_from(ModelPointRow)) or 0,
                db.scalar(select(func.sum(ModelPointRow.requests))) or 0)


def test_flush_with_stored_batches_and_points_keeps_only_the_new(session_factory: sessionmaker[Session]) -> None:
    writer = TelemetryWriter(session_factory, IngestConfig("127.0.0.1", 1))
    assert writer.write([_batch("dev-a", 0, T0), _batch("dev-b", 0, T0)]) == 2
    # One flush: a redelivered batch, a new batch repeating a stored point, a wholly new batch, and the
    # same new batch twice. Only the last two are stored, once; the repeated point stays single.
    flush = [_batch("dev-a", 0, T0), _batch("dev-b", 1, T0), _batch("dev-a", 1, T0 + 10),
             _batch("dev-a", 1, T0 + 10)]
    assert writer.write(flush) == 2
    assert writer.stats["conflict_retries"] == 1
    assert writer.stats["duplicates"] == 2  # the redelivered batch and the copy inside the flush
    assert _counts(session_factory) == (4, 3, 3, 9)
    assert writer.metrics_snapshot()[0][1] == 9  # /metrics counts each stored point once
    with session_factory() as db:
        row = db.scalars(select(SystemPointRow).where(SystemPointRow.device_id == "dev-a")).first()
        assert row is not None and row.cpu_pct is None and row.temps_c == {"zone\\a\tb": 40.5}
        model = db.scalars(select(ModelPointRow).where(ModelPointRow.device_id == "dev-b")).one()
        assert model.buckets and sum(model.buckets.values()) == 3 and model.hardware_class == "rpi4"
        assert model.start_at.timestamp() == T0 and model.end_at.timestamp() == T0 + 10


def test_writer_thread_decodes_and_rejects_an_unstorable_batch_alone(session_factory: sessionmaker[Session]) -> None:
    writer = TelemetryWriter(session_factory, IngestConfig("127.0.0.1", 1, max_delay_s=0.05))
    subscriber = TelemetrySubscriber(IngestConfig("127.0.0.1", 1), writer)
    writer.start()
    try:
        topic = "edgefleet/v1/dev-c/telemetry"
        writer.submit(topic, encode(_batch("dev-c", 0, T0)))
        writer.submit(topic, encode(_batch("dev-c", 1, T0 + 10, model="bad\x00name")))  # PostgreSQL text: no NUL
        writer.submit(topic, b"not json")
        writer.submit(topic, encode(_batch("dev-c", 0, T0)))  # redelivery, caught in memory
        writer.submit(topic, encode(_batch("dev-c", 2, T0 + 20)))
        assert writer.drain(20)
    finally:
        writer.stop()
    assert subscriber.stats["rejected"] == 2, subscriber.last_drop
    assert subscriber.stats["duplicates"] == 1
    assert writer.stats["batches"] == 2 and writer.stats["write_errors"] == 0
    assert _counts(session_factory)[0] == 2


def test_full_backlog_is_counted_as_dropped(session_factory: sessionmaker[Session]) -> None:
    writer = TelemetryWriter(session_factory, IngestConfig("127.0.0.1", 1, max_queue=2))
    TelemetrySubscriber(IngestConfig("127.0.0.1", 1), writer)
    accepted = [writer.submit("edgefleet/v1/dev-d/telemetry", encode(_batch("dev-d", i, T0 + 10 * i)))
                for i in range(3)]
    assert accepted == [True, True, False] and writer.stats["dropped:backlog"] == 1 and writer.backlog == 2
    payload = encode(_batch("dev-d", 9, T0))
    by_bytes = TelemetryWriter(session_factory, IngestConfig("127.0.0.1", 1, max_queue_bytes=2 * len(payload)))
    assert [by_bytes.submit("edgefleet/v1/dev-d/telemetry", payload) for _ in range(3)] == [True, True, False]
    assert by_bytes.stats["dropped:backlog"] == 1


class _CountingRecv(mqtt.Client):
    """Counts the reads that reach the socket (below the chunk buffer)."""

    socket_reads = 0

    def _sock_recv(self, bufsize: int) -> bytes:
        type(self).socket_reads += 1
        return super()._sock_recv(bufsize)


class _Probe(ChunkedReadClient, _CountingRecv):
    pass


def test_chunked_reads_deliver_every_packet_intact(mosquitto: Mosquitto) -> None:
    sizes = [10, 900, 1, 300_000, 700, 64 * 1024, 5] * 10 + [800] * 200  # some span several chunks
    received: list[bytes] = []
    done = threading.Event()

    def on_message(client: Any, userdata: Any, message: mqtt.MQTTMessage) -> None:
        received.append(message.payload)
        if len(received) == len(sizes):
            done.set()

    subscribed = threading.Event()
    sub = _Probe(CallbackAPIVersion.VERSION2, client_id="chunked-sub")
    sub.read_chunk_bytes = 4096
    sub.on_message = on_message
    sub.on_subscribe = lambda *args: subscribed.set()
    sub.on_connect = lambda client, *args: client.subscribe("chunked/#", qos=1)
    sub.connect("127.0.0.1", mosquitto.port)
    sub.loop_start()
    pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="chunked-pub")
    pub.connect("127.0.0.1", mosquitto.port)
    pub.loop_start()
    try:
        assert subscribed.wait(10)
        infos = [pub.publish(f"chunked/{i}", bytes([i % 251]) * size, qos=1) for i, size in enumerate(sizes[:70])]
        for info in infos:
            info.wait_for_publish(20)
        wait_until(lambda: len(received) == 70, timeout_s=30, message="the mixed sizes received")
        _Probe.socket_reads = 0
        infos = [pub.publish(f"chunked/{i}", bytes([i % 251]) * size, qos=1)
                 for i, size in enumerate(sizes) if i >= 70]
        for info in infos:
            info.wait_for_publish(20)
        wait_until(done.is_set, timeout_s=30, message="every message received")
        assert [len(p) for p in received] == sizes
        assert all(p == bytes([i % 251]) * len(p) for i, p in enumerate(received))
        # Unbuffered, paho needs at least three reads per packet (type, length, body).
        assert _Probe.socket_reads < 2 * 200, _Probe.socket_reads
    finally:
        pub.loop_stop()
        pub.disconnect()
        sub.loop_stop()
        sub.disconnect()


def test_database_down_for_a_while_loses_nothing(tmp_path: Any, postgres_template: Any) -> None:
    """Messages keep arriving while PostgreSQL restarts: the writer holds and retries them."""
    from controller.db import make_engine, make_session_factory
    from controller.db import migrate as db_migrate
    from tests.service_stores import Postgres

    server = Postgres(tmp_path / "pg", postgres_template)
    server.start()
    engine = make_engine(server.url)
    db_migrate.upgrade(engine)
    factory = make_session_factory(engine)
    writer = TelemetryWriter(factory, IngestConfig("127.0.0.1", 1, max_delay_s=0.01,
                                                   retry_delays_s=(0.2,) * 50))
    TelemetrySubscriber(IngestConfig("127.0.0.1", 1), writer)
    writer.start()
    topic = "edgefleet/v1/dev-e/telemetry"
    try:
        writer.submit(topic, encode(_batch("dev-e", 0, T0)))
        wait_until(lambda: writer.stats["batches"] == 1, message="first batch stored")
        server.stop()
        for seq in range(1, 6):
            writer.submit(topic, encode(_batch("dev-e", seq, T0 + 10 * seq)))
        wait_until(lambda: writer.stats["write_retries"] >= 2, message="writes retried while the database is down")
        server.start()
        wait_until(lambda: writer.stats["batches"] == 6, timeout_s=30, message="the held batches stored")
        assert writer.stats["write_errors"] == 0
        assert _counts(factory)[:3] == (6, 6, 6)
    finally:
        writer.stop()
        engine.dispose()
        server.close()
