"""Telemetry ingest: receive on paho's thread, decode and write in batches on one writer thread.

    broker ──$share/telemetry/edgefleet/v1/+/telemetry──▶ TelemetrySubscriber (paho thread: append
        (topic, bytes) to a deque, nothing else) ──▶ TelemetryWriter thread: up to `max_batch`
        messages or `max_delay_s` ──▶ decode, check topic, in-memory dedupe (the subscriber's
        `accept`) ──▶ one transaction: COPY batches + points ──▶ senders noted for `SeenRecorder`
        (its own thread: `last_seen_at`, `online` again, once a second)

Why so little on paho's thread: paho reads the socket, acknowledges QoS 1 and calls back in one
Python thread; every microsecond of work there competes for the GIL with reading. Why a writer
thread: one INSERT per message would cap ingest at the database's commit rate; grouping hundreds of
messages into one transaction is what lets a single replica keep up with a fleet. Several replicas
split the topic through the MQTT 5 shared subscription.

Exactly-once storage: the in-memory `SequenceDeduper` drops most redeliveries; the unique
(device, stream, seq) key on `telemetry_batches` catches the rest (a replica restart, another replica):
a flush that hits it is stored again in one transaction with ON CONFLICT DO NOTHING, keeping the
batches the database did not have. Points are unique per (device, series, resolution, start) as well.

Rejected payloads (invalid JSON, wrong schema, a device id other than the topic's, a histogram of
another layout, oversized, a NUL in a text field) are dropped and counted by reason in `stats`;
nothing a device sends can stop ingest. When the backlog is full (the database is down), the
subscriber withholds nothing from paho but counts `dropped:backlog` — the agent's outbox already has
the batch acknowledged, so this is the one place data can be lost, and it is counted and exported on
/metrics.

Errors: none of its own. Bad payloads are `agent.wire.WireError`s (counted, never raised out of a
callback); database failures are retried by the writer, then counted as `write_errors`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import compress
from typing import Any

import paho.mqtt.client as mqtt
import psycopg
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from agent import wire
from agent.metrics.histogram import LatencyHistogram
from agent.telemetry import wire as twire
from controller.mqtt.dedupe import SequenceDeduper
from controller.telemetry.reader import ChunkedReadClient
from controller.telemetry.rows import SYSTEM_COLUMNS, FlushRows, storable
from controller.telemetry.seen import SeenRecorder
from controller.telemetry.store import (
    bulk_insert,
    insert_new_batches,
    insert_new_model_points,
    insert_skipping_duplicates,
    model_key,
)

log = logging.getLogger(__name__)


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
    max_queue_bytes: int = 64 * 1024 * 1024  # raw payloads waiting: bounded in bytes as well as count
    max_payload_bytes: int = twire.MAX_TELEMETRY_BYTES
    retry_delays_s: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0, 8.0)  # then the flush counts as lost
    mark_seen: bool = True  # telemetry counts as a sign of life in the device registry (seen.py)


class TelemetryWriter:
    """Decodes, deduplicates and stores received messages in grouped transactions.

    `submit` (paho's thread) only appends the raw message to a deque: every microsecond spent there is
    taken from reading the socket. Decoding and validation run here, a flush at a time, through the
    `intake` the subscriber installs."""

    def __init__(self, session_factory: sessionmaker[Session], config: IngestConfig,
                 hardware_classes: dict[str, str] | None = None) -> None:
        self.session_factory = session_factory
        self.config = config
        self.stats: Counter[str] = Counter()
        self.last_lag_s = 0.0
        self.intake: Callable[[str, bytes], twire.TelemetryBatch | None] | None = None
        self._received: deque[tuple[str, bytes, float]] = deque()
        # Queued bytes = in - out; each counter has one writer thread, so neither needs a lock.
        self._bytes_in = 0
        self._bytes_out = 0
        self._in_flight = 0
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._hardware_classes = hardware_classes or {}
        # Cumulative since start, per (model, version): the /metrics histograms of this replica.
        self.latency_by_version: dict[tuple[str, str], LatencyHistogram] = {}
        self.requests_by_version: Counter[tuple[str, str]] = Counter()
        self.errors_by_version: Counter[tuple[str, str]] = Counter()
        self._metrics_lock = threading.Lock()
        self.seen = SeenRecorder(session_factory) if config.mark_seen else None

    def submit(self, topic: str, payload: bytes) -> bool:
        """Queue one received message; False (counted as `dropped:backlog`) when the backlog is full."""
        if (len(self._received) >= self.config.max_queue
                or self._bytes_in - self._bytes_out + len(payload) > self.config.max_queue_bytes):
            self.stats["dropped:backlog"] += 1
            return False
        self._bytes_in += len(payload)
        self._received.append((topic, payload, time.time()))
        if not self._wake.is_set():
            self._wake.set()
        return True

    @property
    def backlog(self) -> int:
        return len(self._received) + self._in_flight

    def start(self) -> None:
        self._stop.clear()
        if self.seen is not None:
            self.seen.start()
        self._thread = threading.Thread(target=self._run, name="telemetry-writer", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(10.0)
            self._thread = None
        if self.seen is not None:
            self.seen.stop()

    def drain(self, timeout_s: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout_s
        while self.backlog and time.monotonic() < deadline:
            time.sleep(0.01)
        return not self.backlog

    def _run(self) -> None:
        while not (self._stop.is_set() and not self._received):
            if not self._received:
                self._wake.wait(0.1)
                self._wake.clear()
                continue
            # Wait up to max_delay_s for a full group: fewer, larger transactions under load.
            deadline = time.monotonic() + self.config.max_delay_s
            while len(self._received) < self.config.max_batch and not self._stop.is_set():
                remaining_s = deadline - time.monotonic()
                if remaining_s <= 0:
                    break
                time.sleep(min(remaining_s, 0.005))
            count = min(len(self._received), self.config.max_batch)
            self._in_flight = count
            group = [self._received.popleft() for _ in range(count)]
            self._bytes_out += sum(len(payload) for _, payload, _ in group)
            try:
                batches, newest = self._decode(group)
                if batches:
                    self._write_with_retries(batches)
                    if self.seen is not None:
                        self.seen.note((b.device_id for b in batches), newest)
                self.last_lag_s = max(0.0, time.time() - min(t for _, _, t in group))
            finally:
                self._in_flight = 0

    def _decode(self, group: list[tuple[str, bytes, float]]) -> tuple[list[twire.TelemetryBatch], float]:
        """The new, valid batches of `group` and when the newest of them was received."""
        if self.intake is None:
            raise RuntimeError("telemetry writer has no intake to decode messages with")
        accepted = []
        newest = 0.0
        for topic, payload, received_at in group:
            batch = self.intake(topic, payload)
            if batch is not None:
                accepted.append(batch)
                newest = max(newest, received_at)
        return accepted, newest

    def _write_with_retries(self, batches: list[twire.TelemetryBatch]) -> None:
        """The broker already acknowledged these: try hard (a database restart takes seconds) before
        counting them lost."""
        for attempt, delay_s in enumerate(self.config.retry_delays_s + (None,)):
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
        """Store `batches` (duplicates skipped); returns how many were new.

        The fast path inserts everything without looking (COPY on PostgreSQL) in one transaction and
        fails on any duplicate; then the flush is stored again, tolerantly, in one more transaction:
        batches the database already has are skipped, and so are points it already has (a point
        repeated by a device that crashed between its spool and its outbox)."""
        rows = FlushRows.build(batches, time.time(), self._hardware_classes)
        self.stats["duplicates"] += rows.repeated
        if not rows.batches:
            return 0
        try:
            with self.session_factory() as session:
                for table, columns, values in rows.tables():
                    if values:
                        bulk_insert(session, table, columns, values)
                session.commit()
            new = rows
        except (IntegrityError, psycopg.errors.UniqueViolation):
            self.stats["conflict_retries"] += 1
            with self.session_factory() as session:
                new = rows.only(insert_new_batches(session, rows))
                if new.systems:
                    insert_skipping_duplicates(session, "telemetry_system_points", SYSTEM_COLUMNS,
                                                list(new.systems.values()))
                if new.models:  # only the points inserted now count towards /metrics
                    inserted = insert_new_model_points(session, list(new.models.values()))
                    new.models = {k: v for k, v in new.models.items() if model_key(v) in inserted}
                session.commit()
            self.stats["duplicates"] += len(rows.batches) - len(new.batches)
        self.stats["batches"] += len(new.batches)
        self.stats["model_points"] += len(new.models)
        self._count_metrics(new)
        return len(new.batches)

    def _count_metrics(self, rows: FlushRows) -> None:
        with self._metrics_lock:
            for key, requests, errors, latency in rows.model_histograms():
                total = self.latency_by_version.setdefault(key, LatencyHistogram())
                counts, into = latency.counts, total.counts
                for i in compress(range(len(counts)), counts):  # the few non-empty buckets only
                    into[i] += counts[i]
                total.count += latency.count
                total.sum_s += latency.sum_s
                total.max_s = max(total.max_s, latency.max_s)
                self.requests_by_version[key] += requests
                self.errors_by_version[key] += errors

    def metrics_snapshot(self) -> list[tuple[tuple[str, str], int, int, LatencyHistogram]]:
        with self._metrics_lock:
            return [(k, self.requests_by_version[k], self.errors_by_version[k], h.copy())
                    for k, h in sorted(self.latency_by_version.items())]


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
        writer.intake = self.accept
        self._client = self._build(mqtt.MQTTv5)

    def _build(self, protocol: MQTTProtocolVersion) -> mqtt.Client:
        kwargs: dict[str, Any] = {} if protocol == mqtt.MQTTv5 else {"clean_session": False}
        client = ChunkedReadClient(CallbackAPIVersion.VERSION2, client_id=self.config.client_id,
                                   protocol=protocol, **kwargs)
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
        self.writer.submit(message.topic, bytes(message.payload))

    def accept(self, topic: str, payload: bytes) -> twire.TelemetryBatch | None:
        """The batch in one received message, None when it is invalid (counted as `rejected`, the
        reason kept in `last_drop`) or a duplicate (counted). Runs on the writer's thread."""
        try:
            return self.handle(topic, payload)
        except wire.WireError as e:
            self.stats["rejected"] += 1
            self.last_drop = f"{topic}: {e}"
            return None

    def handle(self, topic: str, payload: bytes) -> twire.TelemetryBatch | None:
        """Validate one message: the batch, or None for a duplicate; raises WireError for invalid ones."""
        device_id, channel = wire.parse_topic(topic)
        if channel != "telemetry":
            raise wire.WireError(f"unexpected channel {channel!r}")
        batch = twire.decode(payload, max_bytes=self.config.max_payload_bytes)
        if batch.device_id != device_id:
            raise wire.WireError(f"payload names device {batch.device_id!r} but came on {topic!r}")
        unstorable = storable(batch)
        if unstorable is not None:
            raise wire.WireError(f"telemetry batch {device_id}/{batch.seq}: {unstorable}")
        self.stats["received"] += 1
        if not self.deduper.first_time(device_id, batch.stream, batch.seq):
            self.stats["duplicates"] += 1
            return None
        return batch
