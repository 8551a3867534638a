"""Telemetry end to end: agent spool → outbox → real Mosquitto → controller ingest → SQLite/PostgreSQL."""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from agent.mqtt import AgentSession, Outbox, SessionConfig
from agent.telemetry import SessionChannel, TelemetryConfig, TelemetryLoop, TelemetrySpool
from controller.telemetry import IngestConfig, TelemetryService
from controller.telemetry.tables import ModelPointRow, TelemetryBatchRow
from tests.services import Mosquitto, wait_until
from tests.telemetry.conftest import FakeModels, FakeSystem


class NoAssignments:
    def receive_assignment(self, payload: bytes) -> None:
        raise ValueError("not under test")


class RecordingChannel(SessionChannel):
    """The real session channel, keeping a copy of every payload it persisted."""

    def __init__(self, session: AgentSession) -> None:
        super().__init__(session)
        self.sent: list[bytes] = []

    def publish(self, build_payload: Callable[[int, str], bytes]) -> int:
        def build(seq: int, stream: str) -> bytes:
            data = build_payload(seq, stream)
            self.sent.append(data)
            return data

        return super().publish(build)


def _agent(broker: Mosquitto, root: Path, device_id: str, system: FakeSystem, models: FakeModels,
           clock: Any) -> tuple[AgentSession, TelemetryLoop]:
    session = AgentSession(SessionConfig("127.0.0.1", broker.port, device_id), Outbox(root / "outbox"),
                           NoAssignments())
    loop = TelemetryLoop(
        TelemetryConfig(device_id, sample_every_s=10, points_per_batch=2, max_in_flight=100,
                        hardware_class="rpi4"),
        TelemetrySpool(root / "spool"), RecordingChannel(session), system, models, clock=clock,
    )
    return session, loop


def _republish(port: int, topic: str, payloads: list[bytes]) -> None:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="replayer")
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        for payload in payloads:
            client.publish(topic, payload, qos=1).wait_for_publish(5)
    finally:
        client.loop_stop()
        client.disconnect()


def _stored(factory: sessionmaker[Session], device_id: str) -> tuple[int, int]:
    with factory() as db:
        batches = db.scalar(select(func.count()).select_from(TelemetryBatchRow)
                            .where(TelemetryBatchRow.device_id == device_id)) or 0
        requests = db.scalar(select(func.sum(ModelPointRow.requests))
                             .where(ModelPointRow.device_id == device_id)) or 0
    return int(batches), int(requests)


def test_broker_down_every_batch_arrives_exactly_once(
    mosquitto: Mosquitto, session_factory: sessionmaker[Session], tmp_path: Path, fake_system: FakeSystem
) -> None:
    # A plain persistent subscription survives the broker restart (Mosquitto persistence on).
    service = TelemetryService(session_factory, IngestConfig("127.0.0.1", mosquitto.port, share_group=None))
    service.start()
    ticks = itertools.count(1_700_000_000, 10)
    models = FakeModels()
    session, loop = _agent(mosquitto, tmp_path / "dev", "dev-1", fake_system, models, lambda: float(next(ticks)))
    session.start()
    try:
        wait_until(session.connected.is_set, message="agent connected")
        rng = random.Random(7)
        for _ in range(4):
            models.serve([rng.uniform(0.001, 0.05) for _ in range(25)], errors=1)
            loop.sample()
        assert loop.flush() == 2
        wait_until(lambda: _stored(session_factory, "dev-1")[0] == 2, message="first batches stored")

        mosquitto.stop()
        wait_until(lambda: not session.connected.is_set(), message="agent saw the broker go")
        for _ in range(6):
            models.serve([rng.uniform(0.001, 0.05) for _ in range(25)], errors=1)
            loop.sample()
        assert loop.flush() == 0, "nothing leaves the spool while the broker is down"
        assert len(loop.spool) == 6

        mosquitto.start()
        wait_until(lambda: service.subscriber.connected.is_set() and session.connected.is_set(), timeout_s=20,
                   message="both sides reconnected")
        assert loop.flush() == 3
        wait_until(lambda: _stored(session_factory, "dev-1") == (5, models.requests), timeout_s=20,
                   message="every batch stored")
        assert models.requests == 250
        # Redelivery of the very same payloads (a PUBACK lost on the way) must not count twice, neither
        # in this replica (in-memory dedupe) nor in a fresh one (the database's unique key).
        sent = loop.channel.sent  # type: ignore[attr-defined]
        assert len(sent) == 5
        _republish(mosquitto.port, "edgefleet/v1/dev-1/telemetry", sent)
        wait_until(lambda: service.subscriber.stats["duplicates"] == 5, message="duplicates seen")
        service.stop()
        service = TelemetryService(session_factory, IngestConfig("127.0.0.1", mosquitto.port, share_group=None,
                                                                 client_id="fresh-replica"))
        service.start()
        _republish(mosquitto.port, "edgefleet/v1/dev-1/telemetry", sent)
        wait_until(lambda: service.writer.stats["duplicates"] == 5, message="duplicates skipped by the database")
        assert _stored(session_factory, "dev-1") == (5, 250)
    finally:
        session.stop()
        service.stop()


def test_agent_killed_with_full_outbox_loses_nothing(
    mosquitto_factory: Any, session_factory: sessionmaker[Session], tmp_path: Path, fake_system: FakeSystem
) -> None:
    broker: Mosquitto = mosquitto_factory()
    ticks = itertools.count(1_700_000_000, 10)
    models = FakeModels()
    root = tmp_path / "dev"
    session, loop = _agent(broker, root, "dev-2", fake_system, models, lambda: float(next(ticks)))
    session.start()
    wait_until(session.connected.is_set, message="agent connected")
    broker.stop()
    wait_until(lambda: not session.connected.is_set(), message="agent offline")
    for _ in range(5):
        models.serve([0.01] * 10)
        loop.sample()
    # Simulate batches that reached the outbox but not the broker, then a crash (no clean stop).
    session.connected.set()
    loop.flush()
    session.connected.clear()
    pending_before = len(session.outbox)
    assert pending_before == 3
    session._client.loop_stop()  # the process dies: nothing more happens in this session object

    broker.start()
    service = TelemetryService(session_factory, IngestConfig("127.0.0.1", broker.port, share_group=None))
    service.start()
    restarted, loop2 = _agent(broker, root, "dev-2", fake_system, models, lambda: float(next(ticks)))
    try:
        restarted.start()
        wait_until(lambda: len(restarted.outbox) == 0, timeout_s=20, message="outbox drained after restart")
        loop2.flush()
        wait_until(lambda: _stored(session_factory, "dev-2") == (3, 50), timeout_s=20,
                   message="all 50 requests stored")
    finally:
        restarted.stop()
        service.stop()


def test_malformed_telemetry_is_rejected_and_counted(
    mosquitto: Mosquitto, session_factory: sessionmaker[Session]
) -> None:
    service = TelemetryService(session_factory, IngestConfig("127.0.0.1", mosquitto.port))
    service.start()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="rogue")
    client.connect("127.0.0.1", mosquitto.port)
    client.loop_start()
    good = (b'{"schema":1,"kind":"telemetry","device_id":"dev-3","stream":"abcdef0123456789","seq":0,'
            b'"sent_at":1.0,"dropped_points":0,"rolled_up_points":0,"points":[{"start_s":0,"end_s":10,'
            b'"resolution_s":10,"samples":1,"system":{"temps_c":{}},"models":[]}]}')
    bad = [
        b"not json",
        b"{}",
        good.replace(b'"dev-3"', b'"dev-4"'),  # names another device than its topic
        good.replace(b'"seq":0', b'"seq":-1'),
        good.replace(b'"models":[]', b'"models":[{"model":"m","version":"1","variant":"v","requests":1,'
                     b'"errors":0,"latency":{"schema":1,"unit":"s","buckets_per_decade":10,"min_s":1e-06,'
                     b'"counts":{},"count":0,"sum_s":0}}]'),  # a histogram of another layout
        good.replace(b'"end_s":10', b'"end_s":NaN'),
        b"x" * 300_000,
    ]
    try:
        for payload in bad:
            client.publish("edgefleet/v1/dev-3/telemetry", payload, qos=1).wait_for_publish(5)
        client.publish("edgefleet/v1/dev-3/telemetry", good, qos=1).wait_for_publish(5)
        wait_until(lambda: service.writer.stats["batches"] == 1 and service.subscriber.stats["rejected"] == len(bad),
                   message="bad payloads counted, the good one stored")
        assert "dev-3" in service.subscriber.last_drop or "dev-4" in service.subscriber.last_drop
    finally:
        client.loop_stop()
        client.disconnect()
        service.stop()


@pytest.mark.parametrize("replicas", [2])
def test_shared_subscription_splits_batches_between_replicas(
    mosquitto: Mosquitto, session_factory: sessionmaker[Session], tmp_path: Path, fake_system: FakeSystem,
    replicas: int,
) -> None:
    services = [TelemetryService(session_factory, IngestConfig("127.0.0.1", mosquitto.port,
                                                                client_id=f"ctl-{i}")) for i in range(replicas)]
    for service in services:
        service.start()
    ticks = itertools.count(1_700_000_000, 10)
    models = FakeModels()
    session, loop = _agent(mosquitto, tmp_path / "dev", "dev-5", fake_system, models, lambda: float(next(ticks)))
    session.start()
    try:
        wait_until(session.connected.is_set, message="agent connected")
        for _ in range(40):
            models.serve([0.002, 0.004])
            loop.sample()
        loop.flush()
        wait_until(lambda: _stored(session_factory, "dev-5") == (20, 80), timeout_s=20, message="all stored")
        per_replica = [s.writer.stats["batches"] for s in services]
        assert sum(per_replica) == 20 and all(n > 0 for n in per_replica), per_replica
    finally:
        session.stop()
        for service in services:
            service.stop()


def test_ingest_through_the_embedded_mqtt_311_broker(amqtt_broker: Any, tmp_path: Path, fake_system: FakeSystem) -> None:
    from controller.db import make_engine, make_session_factory
    from controller.db import migrate as db_migrate

    engine = make_engine(f"sqlite:///{tmp_path / 'c.db'}")
    db_migrate.upgrade(engine)
    factory = make_session_factory(engine)
    service = TelemetryService(factory, IngestConfig("127.0.0.1", amqtt_broker.port))
    service.start()
    try:
        assert service.subscriber.protocol == mqtt.MQTTv311  # amqtt speaks 3.1.1 only: plain subscription
        ticks = itertools.count(1_700_000_000, 10)
        models = FakeModels()
        session, loop = _agent(amqtt_broker, tmp_path / "dev", "dev-6", fake_system, models,
                               lambda: float(next(ticks)))
        session.start()
        try:
            wait_until(session.connected.is_set, message="agent connected")
            for _ in range(4):
                models.serve([0.003] * 3)
                loop.sample()
            loop.flush()
            wait_until(lambda: _stored(factory, "dev-6") == (2, 12), timeout_s=20, message="stored via amqtt")
        finally:
            session.stop()
    finally:
        service.stop()
        engine.dispose()
