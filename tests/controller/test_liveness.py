"""Device liveness: the pure stale check, the sweep on SQLite and PostgreSQL (clock injected, no sleeping
for the threshold), every kind of message bringing a device back, revoked devices left alone, two
replicas sweeping at once, telemetry through a real Mosquitto, and /metrics following the registry."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from agent.daemon.config import DaemonConfig
from agent.metrics.histogram import LatencyHistogram
from agent.telemetry.wire import ModelSample, Point, SystemSample, TelemetryBatch, encode
from controller.background import Periodic
from controller.db import make_engine, make_session_factory
from controller.db import migrate as db_migrate
from controller.db.models import Device, DeviceEvent
from controller.devices import (
    LivenessSweeper,
    SeenDevice,
    mark_offline,
    mark_stale_offline,
    offline_detail,
    record_event,
    record_presence,
    record_seen,
    record_status,
    stale_devices,
)
from controller.settings import Settings
from controller.telemetry import IngestConfig, TelemetryService
from controller.telemetry.prometheus import device_lines
from controller.telemetry.seen import SeenRecorder
from tests.controller.conftest import ControllerEnv
from tests.services import Mosquitto, wait_until

T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=timezone.utc)
LIMIT_S = 90.0


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def sessions(db_url: str) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(db_url)
    db_migrate.upgrade(engine)
    try:
        yield make_session_factory(engine)
    finally:
        engine.dispose()


def _device(device_id: str, *, online: bool, last_seen_at: datetime | None, status: str = "active") -> Device:
    return Device(id=device_id, status=status, hardware_class="rpi4", hardware_profile={}, cert_serial=device_id,
                  cert_not_after=T0 + timedelta(days=365), public_key_sha256="0" * 64, mqtt_username=device_id,
                  mqtt_password_hash="x", online=online, last_seen_at=last_seen_at)


def _add(sessions: sessionmaker[Session], *devices: Device) -> None:
    with sessions() as db:
        db.add_all(devices)
        db.commit()


def _state(sessions: sessionmaker[Session]) -> dict[str, bool]:
    with sessions() as db:
        return {d.id: d.online for d in db.scalars(select(Device).order_by(Device.id))}


def _events(sessions: sessionmaker[Session], device_id: str) -> list[tuple[str, dict[str, Any]]]:
    with sessions() as db:
        rows = db.scalars(select(DeviceEvent).where(DeviceEvent.device_id == device_id,
                                                    DeviceEvent.kind.in_(("online", "offline")))
                          .order_by(DeviceEvent.id))
        return [(e.kind, dict(e.detail)) for e in rows]


# -- the pure core -------------------------------------------------------------------------------------

@pytest.mark.parametrize(("online", "status", "silent_s", "stale"), [
    (True, "active", 10.0, False),
    (True, "active", LIMIT_S, False),  # exactly at the threshold: not yet
    (True, "active", LIMIT_S + 0.001, True),
    (True, "active", None, True),  # marked online but never heard from
    (False, "active", 10_000.0, False),  # already offline
    (True, "revoked", 10_000.0, False),  # revoked devices keep their last state
])
def test_stale_devices_table(online: bool, status: str, silent_s: float | None, stale: bool) -> None:
    seen = None if silent_s is None else T0 - timedelta(seconds=silent_s)
    assert stale_devices([SeenDevice("dev", online, status, seen)], T0, LIMIT_S) == (["dev"] if stale else [])


def test_offline_detail_says_why() -> None:
    detail = offline_detail(T0 - timedelta(seconds=125.4), T0, LIMIT_S)
    assert detail["reason"] == "stale: no message for 125 s" and detail["silent_s"] == 125.4
    assert detail["offline_after_s"] == LIMIT_S and detail["last_seen_at"] == (T0 - timedelta(seconds=125.4)).isoformat()
    assert offline_detail(None, T0, LIMIT_S)["reason"] == "stale: no message ever received"
    with pytest.raises(ValueError, match="positive"):
        stale_devices([], T0, 0)


def test_threshold_setting_default_and_bounds() -> None:
    assert Settings().device_offline_after_s == 3 * DaemonConfig.__dataclass_fields__["telemetry_batch_every_s"].default
    assert Settings(device_offline_after_s=0).device_offline_after_s == 0  # off
    for bad in (5, -1, float("nan"), float("inf"), 10 * 24 * 3600):
        with pytest.raises(ValidationError, match="device_offline_after_s"):
            Settings(device_offline_after_s=bad)
    assert LivenessSweeper(make_session_factory(make_engine("sqlite://")), offline_after_s=90).every_s == 15


# -- the sweep on a real database ----------------------------------------------------------------------

def test_silent_device_goes_offline_and_telemetry_brings_it_back(sessions: sessionmaker[Session]) -> None:
    clock = Clock(T0)
    _add(sessions,
         _device("quiet", online=True, last_seen_at=T0 - timedelta(seconds=30)),
         _device("chatty", online=True, last_seen_at=T0 - timedelta(seconds=30)),
         _device("revoked", online=True, last_seen_at=T0 - timedelta(days=30), status="revoked"),
         _device("gone", online=False, last_seen_at=T0 - timedelta(days=30)))
    sweeper = LivenessSweeper(sessions, offline_after_s=LIMIT_S, clock=clock)
    assert sweeper.sweep() == []  # 30 s of silence is normal
    clock.advance(45)
    with sessions() as db:
        assert record_seen(db, ["chatty"], at=clock.now, via="telemetry") == []  # online already: no event
        db.commit()
    clock.advance(30)  # quiet: 105 s of silence, chatty: 30 s
    assert sweeper.sweep() == ["quiet"]
    assert _state(sessions) == {"chatty": True, "gone": False, "quiet": False, "revoked": True}
    [(kind, detail)] = _events(sessions, "quiet")
    assert kind == "offline" and detail["reason"] == "stale: no message for 105 s" and detail["via"] == "sweep"
    assert sweeper.sweep() == [] and len(_events(sessions, "quiet")) == 1  # idempotent: one event
    # the device speaks again (telemetry): online, with an event saying what brought it back
    clock.advance(600)
    with sessions() as db:
        assert record_seen(db, ["quiet", "revoked", "unknown"], at=clock.now, via="telemetry") == ["quiet"]
        db.commit()
    assert _state(sessions)["quiet"] is True and _state(sessions)["revoked"] is True
    assert _events(sessions, "quiet")[-1] == ("online", {"via": "telemetry"})
    with sessions() as db:
        revoked = db.get(Device, "revoked")
        assert revoked is not None and revoked.last_seen_at == T0 - timedelta(days=30)  # not touched
        quiet = db.get(Device, "quiet")
        assert quiet is not None and quiet.last_seen_at == clock.now
    assert _events(sessions, "revoked") == [] and _events(sessions, "gone") == []
    # last_seen_at never moves backwards (a late flush from another replica)
    with sessions() as db:
        record_seen(db, ["quiet"], at=clock.now - timedelta(seconds=50), via="telemetry")
        db.commit()
        assert db.get(Device, "quiet").last_seen_at == clock.now  # type: ignore[union-attr]


@pytest.mark.parametrize("message", ["status", "event", "presence"])
def test_any_message_brings_a_device_back(sessions: sessionmaker[Session], message: str) -> None:
    clock = Clock(T0)
    _add(sessions, _device("dev-1", online=True, last_seen_at=T0))
    clock.advance(LIMIT_S + 1)
    assert LivenessSweeper(sessions, offline_after_s=LIMIT_S, clock=clock).sweep() == ["dev-1"]
    with sessions() as db:
        if message == "status":
            applied = record_status(db, "dev-1", model="digits", version="1", variant="ort-fp32",
                                    update_state="idle", last_error=None, at=clock.now)
        elif message == "event":
            applied = record_event(db, "dev-1", "gate_passed", {}, at=clock.now)
        else:
            applied = record_presence(db, "dev-1", online=True, at=clock.now)
        assert applied
        db.commit()
    assert _state(sessions) == {"dev-1": True}
    assert [k for k, _ in _events(sessions, "dev-1")] == ["offline", "online"]
    assert _events(sessions, "dev-1")[-1][1] == {"via": message}
    with sessions() as db:  # the last will still marks it offline at once
        assert record_presence(db, "dev-1", online=False, at=clock.now)
        db.commit()
    assert _state(sessions) == {"dev-1": False}
    assert _events(sessions, "dev-1")[-1] == ("offline", {"via": "presence"})


def test_device_heard_from_between_select_and_update_is_left_online(sessions: sessionmaker[Session]) -> None:
    """The UPDATE repeats the stale condition: a stale snapshot cannot mark a live device offline."""
    _add(sessions, _device("dev-1", online=True, last_seen_at=T0))
    now = T0 + timedelta(seconds=LIMIT_S + 5)
    with sessions() as db:
        snapshot = stale_devices([SeenDevice("dev-1", True, "active", T0)], now, LIMIT_S)
        assert snapshot == ["dev-1"]
        record_seen(db, ["dev-1"], at=now - timedelta(seconds=1), via="telemetry")
        db.commit()
        assert mark_offline(db, snapshot, now=now, offline_after_s=LIMIT_S) == []
        assert mark_stale_offline(db, now=now, offline_after_s=LIMIT_S) == []
        db.commit()
    assert _state(sessions) == {"dev-1": True} and _events(sessions, "dev-1") == []


def test_two_replicas_sweeping_at_once_record_one_transition(pg_server: Any) -> None:
    """On PostgreSQL the second replica's UPDATE waits for the first's row locks, then re-checks its WHERE."""
    from tests.controller.conftest import new_pg_database

    engine = make_engine(new_pg_database(pg_server))
    db_migrate.upgrade(engine)
    sessions = make_session_factory(engine)
    try:
        _add(sessions, *[_device(f"dev-{i:02d}", online=True, last_seen_at=T0) for i in range(20)])
        now = T0 + timedelta(seconds=LIMIT_S + 1)
        first, second = sessions(), sessions()
        marked: dict[str, list[str]] = {}
        assert len(mark_stale_offline(first, now=now, offline_after_s=LIMIT_S)) == 20  # holds the row locks

        def replica_b() -> None:
            marked["b"] = mark_stale_offline(second, now=now, offline_after_s=LIMIT_S)
            second.commit()

        thread = threading.Thread(target=replica_b)
        thread.start()
        thread.join(0.5)
        assert thread.is_alive()  # blocked on the first replica's row locks
        first.commit()
        thread.join(10)
        assert marked["b"] == []
        first.close()
        second.close()
        with sessions() as db:
            offline_events = db.scalars(select(DeviceEvent).where(DeviceEvent.kind == "offline")).all()
        assert len(offline_events) == 20 and not any(_state(sessions).values())
    finally:
        engine.dispose()


def test_periodic_keeps_running_after_a_failure() -> None:
    calls: list[int] = []
    done = threading.Event()

    def job() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("database restarting")
        done.set()

    periodic = Periodic(job, every_s=0.01, what="test job", first_after_s=0)
    periodic.start()
    try:
        assert done.wait(10)
    finally:
        periodic.stop()
    assert periodic.failures == 1 and periodic.runs >= 1
    with pytest.raises(ValueError, match="every_s"):
        Periodic(job, every_s=0, what="test job")


# -- telemetry through a real broker, and the app ------------------------------------------------------

def _telemetry(device_id: str, seq: int) -> bytes:
    h = LatencyHistogram()
    h.record(0.002)
    start_s = T0.timestamp() + 10 * seq
    point = Point(start_s, start_s + 10, 10, SystemSample(cpu_pct=5.0),
                  (ModelSample("digits", "1", "ort-fp32", 1, 0, h),))
    return encode(TelemetryBatch(device_id, "00000000abcdef01", seq, start_s + 10, (point,), hardware_class="rpi4"))


def test_telemetry_over_mqtt_brings_a_swept_device_back(
    mosquitto: Mosquitto, sessions: sessionmaker[Session]
) -> None:
    _add(sessions, _device("dev-1", online=True, last_seen_at=datetime.now(timezone.utc) - timedelta(hours=1)),
         _device("dev-2", online=True, last_seen_at=datetime.now(timezone.utc) - timedelta(hours=1),
                 status="revoked"))
    assert LivenessSweeper(sessions, offline_after_s=LIMIT_S).sweep() == ["dev-1"]
    service = TelemetryService(sessions, IngestConfig("127.0.0.1", mosquitto.port, share_group=None))
    service.start()
    try:
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="dev-1")
        client.connect("127.0.0.1", mosquitto.port)
        client.loop_start()
        for device_id in ("dev-1", "dev-2"):
            client.publish(f"edgefleet/v1/{device_id}/telemetry", _telemetry(device_id, 0), qos=1).wait_for_publish(5)
        client.loop_stop()
        client.disconnect()
        wait_until(lambda: _state(sessions)["dev-1"], message="dev-1 back online after its telemetry")
        wait_until(lambda: service.writer.stats["batches"] == 2, message="both batches stored")
    finally:
        service.stop()
    assert _state(sessions) == {"dev-1": True, "dev-2": True}
    assert _events(sessions, "dev-1")[-1] == ("online", {"via": "telemetry"})
    assert service.writer.seen is not None
    assert service.writer.seen.stats["back_online"] == 1 and service.writer.seen.stats["errors"] == 0
    with sessions() as db:
        revoked = db.get(Device, "dev-2")
        assert revoked is not None and revoked.last_seen_at is not None
        assert revoked.last_seen_at < datetime.now(timezone.utc) - timedelta(minutes=30)


def test_seen_recorder_coalesces_and_retries_after_a_failed_write(tmp_path: Any) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'registry.db'}")
    sessions = make_session_factory(engine)
    recorder = SeenRecorder(sessions, every_s=60)
    try:
        recorder.note(["dev-1", "dev-2"], T0.timestamp())
        recorder.note(["dev-1"], T0.timestamp() + 5)
        assert recorder.flush() == 0 and recorder.stats["errors"] == 1  # no registry yet: nothing lost
        db_migrate.upgrade(engine)
        _add(sessions, _device("dev-1", online=False, last_seen_at=None),
             _device("dev-2", online=True, last_seen_at=T0 - timedelta(seconds=1)))
        assert recorder.flush() == 1 and recorder.stats["back_online"] == 1
        with sessions() as db:
            seen = {d.id: d.last_seen_at for d in db.scalars(select(Device))}
        assert seen == {"dev-1": T0 + timedelta(seconds=5), "dev-2": T0 + timedelta(seconds=5)}
        assert recorder.flush() == 0 and recorder.stats["rounds"] == 1  # nothing noted since
        assert _events(sessions, "dev-1") == [("online", {"via": "telemetry"})]
    finally:
        engine.dispose()


def test_app_sweeps_and_metrics_follow(env: ControllerEnv) -> None:
    sweeper = env.ctx.extras["liveness"]
    assert isinstance(sweeper, LivenessSweeper) and sweeper.offline_after_s == 90
    now = datetime.now(timezone.utc)
    sessions = env.ctx.session_factory
    _add(sessions, _device("fresh", online=True, last_seen_at=now),
         _device("silent", online=True, last_seen_at=now - timedelta(seconds=300)))
    metrics = env.client.get("/metrics", headers=env.auth("viewer")).text
    assert 'edgefleet_devices{hardware_class="rpi4",model="",version="",online="true"} 2' in metrics
    assert sweeper.sweep() == ["silent"]
    metrics = env.client.get("/metrics", headers=env.auth("viewer")).text
    assert 'edgefleet_devices{hardware_class="rpi4",model="",version="",online="true"} 1' in metrics
    assert 'edgefleet_devices{hardware_class="rpi4",model="",version="",online="false"} 1' in metrics
    with sessions() as db:
        lines = device_lines(db)
    assert any('online="false"} 1' in line for line in lines)
    listed = env.client.get("/api/v1/devices", params={"online": "false"}, headers=env.auth("viewer")).json()
    assert [d["id"] for d in listed["items"]] == ["silent"]
