"""Telemetry ingest: decode on paho's thread, write in batches from one writer thread.

    broker ──$share/telemetry/edgefleet/v1/+/telemetry──▶ TelemetrySubscriber (paho thread: bound,
        decode, check topic, in-memory dedupe) ──▶ bounded queue ──▶ TelemetryWriter thread:
        up to `max_batch` messages or `max_delay_s` ──▶ one transaction: batches + points

Why a writer thread: one INSERT per message would cap ingest at the database's commit rate; grouping
hundreds of messages into one transaction is what lets a single replica keep up with a fleet. Several
replicas split the topic through the MQTT 5 shared subscription.

Exactly-once storage: the in-memory `SequenceDeduper` drops most redeliveries; the unique
(device, stream, seq) key on `telemetry_batches` catches the rest (a replica restart, another replica).
Points are unique per (device, series, resolution, start) as well. A transaction that hits a conflict
is retried message by message, skipping the duplicates.

Rejected payloads (invalid JSON, wrong schema, a device id other than the topic's, a histogram of
another layout, oversized) are dropped and counted by reason in `stats`; nothing a device sends can
stop ingest. When the queue is full (the database is down), the subscriber withholds nothing from
paho but counts `dropped:backlog` — the agent's outbox already has the batch acknowledged, so this is
the one place data can be lost, and it is counted and exported on /metrics.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import paho.mqtt.client as mqtt
import psycopg
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from sqlalchemy import insert, select, tuple_
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from agent import wire
from agent.metrics.histogram import LatencyHistogram
from agent.telemetry import wire as twire
from controller.mqtt.dedupe import SequenceDeduper
from controller.telemetry.tables import ModelPointRow, SystemPointRow, TelemetryBatchRow

log = logging.getLogger(__name__)


def utc(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, tz=timezone.utc)


@dataclass(frozen=True)
class IngestConfig:
    host: str
    port: int
    username: str | None = None
    password: str | None = None
    client_id: str = "edgefleet-telemetry"
    share_group: str | None = "telemetry"
    session_expiry_s: int = 3600
    max_batch: int = 500
    max_delay_s: float = 0.2
    max_queue: int = 20_000
    max_payload_bytes: int = twire.MAX_TELEMETRY_BYTES


class TelemetryWriter:
    """Writes decoded batches in grouped transactions; `submit` is safe from any thread."""

    def __init__(self, session_factory: sessionmaker[Session], config: IngestConfig,
                 hardware_classes: dict[str, str] | None = None) -> None:
        self.session_factory = session_factory
        self.config = config
        self.stats: Counter[str] = Counter()
        self.last_lag_s = 0.0
        self._pending_metrics: list[dict[str, Any]] = []
        self._queue: queue.Queue[tuple[twire.TelemetryBatch, float]] = queue.Queue(config.max_queue)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._hardware_classes = hardware_classes or {}
        # Cumulative since start, per (model, version): the /metrics histograms of this replica.
        self.latency_by_version: dict[tuple[str, str], LatencyHistogram] = {}
        self.requests_by_version: Counter[tuple[str, str]] = Counter()
        self.errors_by_version: Counter[tuple[str, str]] = Counter()
        self._metrics_lock = threading.Lock()

    def submit(self, batch: twire.TelemetryBatch) -> bool:
        try:
            self._queue.put_nowait((batch, time.time()))
            return True
        except queue.Full:
            self.stats["dropped:backlog"] += 1
            return False

    @property
    def backlog(self) -> int:
        return self._queue.qsize()

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="telemetry-writer", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10.0)
            self._thread = None

    def drain(self, timeout_s: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout_s
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.01)
        return not self._queue.unfinished_tasks

    def _run(self) -> None:
        while not (self._stop.is_set() and self._queue.empty()):
            try:
                first = self._queue.get(timeout=0.1)
            except queue.Empty:
                continue
            group = [first]
            deadline = time.monotonic() + self.config.max_delay_s
            while len(group) < self.config.max_batch:
                try:
                    group.append(self._queue.get(timeout=max(0.0, deadline - time.monotonic())))
                except queue.Empty:
                    break
            try:
                self._write_with_retries([b for b, _ in group])
                self.last_lag_s = max(0.0, time.time() - min(t for _, t in group))
            finally:
                for _ in group:
                    self._queue.task_done()

    def _write_with_retries(self, batches: list[twire.TelemetryBatch]) -> None:
        """The broker already acknowledged these: try hard (a database restart takes seconds) before
        counting them lost."""
        for attempt, delay_s in enumerate((0.5, 1.0, 2.0, 4.0, 8.0, None)):
            try:
                self.write(batches)
                return
            except Exception:  # noqa: BLE001 - a database outage must not kill the writer
                if delay_s is None or self._stop.wait(delay_s):
                    self.stats["write_errors"] += len(batches)
                    log.exception("telemetry write of %d batches failed %d times", len(batches), attempt + 1)
                    return
                self.stats["write_retries"] += 1

    def write(self, batches: Sequence[twire.TelemetryBatch]) -> int:
        """Store `batches` (duplicates skipped); returns how many were new."""
        try:
            with self.session_factory() as session:
                self._pending_metrics = []
                new = self._insert(session, batches)
                session.commit()
                self._count_metrics(self._pending_metrics)
                return new
        except (IntegrityError, psycopg.errors.UniqueViolation):
            self.stats["conflict_retries"] += 1
        new = 0
        for batch in batches:  # another replica stored some, or a point came twice: one by one, tolerantly
            try:
                with self.session_factory() as session:
                    self._pending_metrics = []
                    new += self._insert(session, [batch], tolerant=True)
                    session.commit()
                    self._count_metrics(self._pending_metrics)
            except (IntegrityError, psycopg.errors.UniqueViolation):
                self.stats["duplicates"] += 1
        return new

    def _insert(self, session: Session, batches: Sequence[twire.TelemetryBatch], tolerant: bool = False) -> int:
        """The fast path inserts without looking (COPY on PostgreSQL) and fails on any duplicate point;
        the `tolerant` path skips points already stored (a point repeated by a device that crashed
        between its spool and its outbox)."""
        keys = {(b.device_id, b.stream, b.seq) for b in batches}
        seen: set[tuple[str, str, int]] = {
            (r[0], r[1], r[2]) for r in session.execute(
                select(TelemetryBatchRow.device_id, TelemetryBatchRow.stream, TelemetryBatchRow.seq).where(
                    tuple_(TelemetryBatchRow.device_id, TelemetryBatchRow.stream, TelemetryBatchRow.seq).in_(keys)
                )
            )
        }
        batch_rows: list[dict[str, Any]] = []
        model_rows: dict[tuple[Any, ...], dict[str, Any]] = {}
        system_rows: dict[tuple[Any, ...], dict[str, Any]] = {}
        for b in batches:
            key = (b.device_id, b.stream, b.seq)
            if key in seen:
                self.stats["duplicates"] += 1
                continue
            seen.add(key)
            batch_rows.append({"device_id": b.device_id, "stream": b.stream, "seq": b.seq,
                               "received_at": utc(time.time()), "sent_at": utc(b.sent_at),
                               "points": len(b.points), "dropped_points": b.dropped_points,
                               "rolled_up_points": b.rolled_up_points})
            hardware_class = b.hardware_class or self._hardware_classes.get(b.device_id, "")
            for p in b.points:
                start = utc(p.start_s)
                system_rows[(b.device_id, p.resolution_s, start)] = {
                    "device_id": b.device_id, "resolution_s": p.resolution_s, "start_at": start,
                    "end_at": utc(p.end_s), "samples": p.samples, "cpu_pct": p.system.cpu_pct,
                    "mem_used_mb": p.system.mem_used_mb, "disk_used_pct": p.system.disk_used_pct,
                    "temp_max_c": max(p.system.temps_c.values()) if p.system.temps_c else None,
                    "temps_c": dict(p.system.temps_c),
                }
                for m in p.models:
                    h = m.latency
                    model_rows[(b.device_id, m.model, m.version, m.variant, p.resolution_s, start)] = {
                        "device_id": b.device_id, "hardware_class": hardware_class, "model": m.model,
                        "version": m.version, "variant": m.variant, "resolution_s": p.resolution_s,
                        "start_at": start, "end_at": utc(p.end_s), "requests": m.requests, "errors": m.errors,
                        "latency_count": h.count, "latency_sum_s": h.sum_s, "latency_max_s": h.max_s,
                        "buckets": {str(i): c for i, c in enumerate(h.counts) if c},
                    }
        if not batch_rows:
            return 0
        for table, values in ((TelemetryBatchRow, batch_rows), (SystemPointRow, list(system_rows.values())),
                              (ModelPointRow, list(model_rows.values()))):
            if values and tolerant and table is not TelemetryBatchRow:
                _insert_skipping_duplicates(session, table, values)
            elif values:
                _bulk_insert(session, table, values)
        self.stats["batches"] += len(batch_rows)
        self.stats["model_points"] += len(model_rows)
        self._pending_metrics = list(model_rows.values())
        return len(batch_rows)

    def _count_metrics(self, model_rows: Sequence[dict[str, Any]]) -> None:
        with self._metrics_lock:
            for row in model_rows:
                key = (row["model"], row["version"])
                h = self.latency_by_version.setdefault(key, LatencyHistogram())
                for index, count in row["buckets"].items():
                    h.counts[int(index)] += count
                h.count += row["latency_count"]
                h.sum_s += row["latency_sum_s"]
                h.max_s = max(h.max_s, row["latency_max_s"])
                self.requests_by_version[key] += row["requests"]
                self.errors_by_version[key] += row["errors"]

    def metrics_snapshot(self) -> list[tuple[tuple[str, str], int, int, LatencyHistogram]]:
        with self._metrics_lock:
            return [(k, self.requests_by_version[k], self.errors_by_version[k], h.copy())
                    for k, h in sorted(self.latency_by_version.items())]


def _bulk_insert(session: Session, table: Any, values: list[dict[str, Any]]) -> None:
    """Insert many rows in the session's transaction: COPY on PostgreSQL (one round trip instead of one
    statement per row, ≈3x the ingest rate), an executemany elsewhere."""
    connection = session.connection()
    if connection.dialect.name != "postgresql":
        session.execute(insert(table), values)
        return
    columns = list(values[0])
    driver = connection.connection.driver_connection
    assert driver is not None
    with driver.cursor() as cursor:
        statement = f"COPY {table.__tablename__} ({', '.join(columns)}) FROM STDIN"
        with cursor.copy(statement) as copy:
            for row in values:
                copy.write_row([json.dumps(v) if isinstance(v, dict) else v for v in (row[c] for c in columns)])


def _insert_skipping_duplicates(session: Session, table: Any, values: list[dict[str, Any]]) -> None:
    dialect = session.connection().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as dialect_insert
    elif dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as dialect_insert  # type: ignore[assignment]
    else:
        raise RuntimeError(f"telemetry ingest supports SQLite and PostgreSQL, not {dialect}")
    session.execute(dialect_insert(table).on_conflict_do_nothing(), values)


class TelemetrySubscriber:
    """The MQTT side: a persistent MQTT 5 session with a shared subscription to every device's telemetry."""

    def __init__(self, config: IngestConfig, writer: TelemetryWriter,
                 deduper: SequenceDeduper | None = None) -> None:
        self.config = config
        self.writer = writer
        self.deduper = deduper or SequenceDeduper()
        self.stats: Counter[str] = Counter()
        self.connected = threading.Event()  # set once the subscription is granted, not at CONNACK
        self.last_drop = ""
        self.protocol: MQTTProtocolVersion | None = None
        self._client = self._build(mqtt.MQTTv5)

    def _build(self, protocol: MQTTProtocolVersion) -> mqtt.Client:
        kwargs: dict[str, Any] = {} if protocol == mqtt.MQTTv5 else {"clean_session": False}
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.config.client_id, protocol=protocol,
                             **kwargs)
        if self.config.username is not None:
            client.username_pw_set(self.config.username, self.config.password)
        client.reconnect_delay_set(1, 30)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        return client

    def start(self, timeout_s: float = 10.0, probe_timeout_s: float = 2.0) -> None:
        """MQTT 5 with a shared subscription; MQTT 3.1.1 with a plain one when the broker only speaks
        that (amqtt, the embedded broker): every replica then sees every batch, and the database's
        unique keys keep storage exactly-once."""
        for protocol, wait_s in ((mqtt.MQTTv5, probe_timeout_s), (mqtt.MQTTv311, timeout_s)):
            self._client = self._build(protocol)
            if protocol == mqtt.MQTTv5:
                props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
                props.SessionExpiryInterval = self.config.session_expiry_s
                self._client.connect(self.config.host, self.config.port, clean_start=False, properties=props)
            else:
                self._client.connect(self.config.host, self.config.port)
            self._client.loop_start()
            if self.connected.wait(wait_s):
                self.protocol = protocol
                return
            self._client.loop_stop()
            self._client.disconnect()
        raise ConnectionError(f"broker {self.config.host}:{self.config.port} did not accept the subscriber")

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()
        self.connected.clear()

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode,
                    props: Properties | None) -> None:
        if reason.is_failure:
            self.stats[f"connect_refused:{reason.value}"] += 1
            return
        group = self.config.share_group
        prefix = f"$share/{group}/" if group and client.protocol == mqtt.MQTTv5 else ""
        client.subscribe(f"{prefix}{wire.TOPIC_ROOT}/+/telemetry", qos=1)
        self.stats["connects"] += 1

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reasons: list[ReasonCode],
                      props: Properties | None) -> None:
        if any(r.is_failure for r in reasons):
            self.stats["subscribe_refused"] += 1
            return
        self.connected.set()

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode,
                       props: Properties | None) -> None:
        self.connected.clear()

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        try:
            self.handle(message.topic, bytes(message.payload))
        except wire.WireError as e:
            self.stats["rejected"] += 1
            self.last_drop = f"{message.topic}: {e}"

    def handle(self, topic: str, payload: bytes) -> None:
        """Validate one message and queue it for the writer; raises WireError for invalid ones."""
        device_id, channel = wire.parse_topic(topic)
        if channel != "telemetry":
            raise wire.WireError(f"unexpected channel {channel!r}")
        batch = twire.decode(payload, max_bytes=self.config.max_payload_bytes)
        if batch.device_id != device_id:
            raise wire.WireError(f"payload names device {batch.device_id!r} but came on {topic!r}")
        self.stats["received"] += 1
        if not self.deduper.first_time(device_id, batch.stream, batch.seq):
            self.stats["duplicates"] += 1
            return
        self.writer.submit(batch)
