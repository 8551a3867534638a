"""The device registry: queries by tag, class and model version, and what devices last reported.

The MQTT bridge calls `record_presence` / `record_status` / `record_event` as messages arrive, telemetry
ingest calls `record_seen`; the API reads through `device_query`. A revoked device's reports are
ignored: its credential no longer works on the broker, and a late retained message must not bring it
back to life in the registry.

Liveness: presence messages (the agent's last will) alone cannot be trusted: a half-open connection,
or a broker that lost the will, would leave a device "online" forever. So every message from a device
(status, event, telemetry, presence online) sets `last_seen_at` and marks it online, and
`mark_stale_offline` (run periodically by every replica) marks offline the devices silent for longer
than `device_offline_after_s`. Which devices are stale is decided by the pure `stale_devices`; the
UPDATE re-checks `last_seen_at` in its WHERE, so replicas sweeping at once record each transition
once, and a device heard from meanwhile is left alone. An `online` / `offline` event records each
transition, with what caused it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import ColumnElement, Select, String, Table, any_, bindparam, insert, or_, select, update
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Session, sessionmaker

from agent import wire
from controller.db.base import utcnow
from controller.db.models import Device, DeviceEvent, DeviceTag
from controller.enrollment.service import check_hardware_class, check_tags
from controller.errors import NotFound

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeviceFilter:
    tags: tuple[str, ...] = ()
    hardware_class: str | None = None
    model: str | None = None
    version: str | None = None
    status: str | None = None
    online: bool | None = None


def device_query(f: DeviceFilter) -> Select[Device]:
    """Devices matching every given criterion, ordered by id; several tags mean all of them."""
    query = select(Device)
    for tag in f.tags:
        query = query.where(Device.id.in_(select(DeviceTag.device_id).where(DeviceTag.tag == tag)))
    if f.hardware_class is not None:
        query = query.where(Device.hardware_class == f.hardware_class)
    if f.model is not None:
        query = query.where(Device.current_model == f.model)
    if f.version is not None:
        query = query.where(Device.current_version == f.version)
    if f.status is not None:
        query = query.where(Device.status == f.status)
    if f.online is not None:
        query = query.where(Device.online.is_(f.online))
    return query.order_by(Device.id)


def get_device(session: Session, device_id: str) -> Device:
    device = session.get(Device, device_id)
    if device is None:
        raise NotFound(f"device {device_id} does not exist")
    return device


def update_labels(
    session: Session,
    device_id: str,
    *,
    add_tags: list[str],
    remove_tags: list[str],
    hardware_class: str | None,
    by: str,
) -> Device:
    device = get_device(session, device_id)
    current = set(device.tag_names)
    wanted = (current | set(check_tags(add_tags))) - set(remove_tags)
    check_tags(sorted(wanted))
    if wanted != current:
        device.tags = [t for t in device.tags if t.tag in wanted] + [
            DeviceTag(tag=t) for t in sorted(wanted - current)
        ]
    detail: dict[str, Any] = {"by": by, "tags": sorted(wanted)}
    if hardware_class is not None and hardware_class != device.hardware_class:
        detail["hardware_class"] = {"from": device.hardware_class, "to": check_hardware_class(hardware_class)}
        device.hardware_class = hardware_class
    session.add(DeviceEvent(device_id=device_id, at=utcnow(), kind="labels_changed", detail=detail))
    return device


def _active(session: Session, device_id: str) -> Device | None:
    device = session.get(Device, device_id)
    return device if device is not None and device.status == "active" else None


def _seen(session: Session, device: Device, at: datetime, via: str) -> None:
    """A message from `device` arrived at `at`: it is alive, whatever the registry thought."""
    if not device.online:
        session.add(DeviceEvent(device_id=device.id, at=at, kind="online", detail={"via": via}))
        device.online = True
    device.last_seen_at = at


def record_presence(session: Session, device_id: str, *, online: bool, at: datetime | None = None) -> bool:
    """Apply an `online` message; returns False when the device is unknown or revoked."""
    device = _active(session, device_id)
    if device is None:
        return False
    at = at or utcnow()
    if online:
        _seen(session, device, at, "presence")
        return True
    if device.online:
        session.add(DeviceEvent(device_id=device_id, at=at, kind="offline", detail={"via": "presence"}))
    device.online = False
    device.last_seen_at = at
    return True


def record_status(
    session: Session,
    device_id: str,
    *,
    model: str | None,
    version: str | None,
    variant: str | None,
    update_state: str | None,
    last_error: str | None,
    at: datetime | None = None,
) -> bool:
    """Apply a `status` message; a change of model, variant or state is kept in the history."""
    device = _active(session, device_id)
    if device is None:
        return False
    at = at or utcnow()
    _seen(session, device, at, "status")
    before = (device.current_model, device.current_version, device.current_variant, device.update_state)
    after = (model, version, variant, update_state)
    if before != after:
        session.add(
            DeviceEvent(
                device_id=device_id,
                at=at,
                kind="status",
                detail={
                    "model": model,
                    "version": version,
                    "variant": variant,
                    "state": update_state,
                    "error": last_error,
                },
            )
        )
    device.current_model, device.current_version, device.current_variant, device.update_state = after
    device.last_error = last_error
    return True


def record_event(
    session: Session, device_id: str, kind: str, detail: dict[str, Any], *, at: datetime | None = None
) -> bool:
    """Append an agent-reported event (update lifecycle, gate report) to the history."""
    device = _active(session, device_id)
    if device is None:
        return False
    at = at or utcnow()
    _seen(session, device, at, "event")
    session.add(DeviceEvent(device_id=device_id, at=at, kind=kind[:64], detail=detail))
    return True


#: Devices per UPDATE statement (bounds the IN list).
_ID_CHUNK = 500
_DEVICES = cast(Table, Device.__table__)
_EVENTS = cast(Table, DeviceEvent.__table__)


def _chunks(items: Sequence[Any]) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), _ID_CHUNK):
        yield items[start : start + _ID_CHUNK]


def _id_in(session: Session) -> ColumnElement[bool]:
    """`devices.id` among the `ids` parameter: one array parameter on PostgreSQL (measured a third of
    the client CPU and a quarter of the time of an expanded IN list for 500 devices), an IN list elsewhere."""
    if session.get_bind().dialect.name == "postgresql":
        return _DEVICES.c.id == any_(bindparam("ids", type_=ARRAY(String)))
    return _DEVICES.c.id.in_(bindparam("ids", expanding=True))


def _add_events(session: Session, rows: list[dict[str, Any]]) -> None:
    if rows:
        session.execute(insert(_EVENTS), rows)


def record_seen(session: Session, device_ids: Iterable[str], *, at: datetime, via: str) -> list[str]:
    """Many devices were heard from by `at` (a flush of telemetry): set `last_seen_at`, bring back online
    the ones marked offline (with an `online` event). Returns those that came back; unknown and revoked
    ids are skipped. Core statements (no ORM objects), two per chunk of devices: telemetry ingest runs
    this for every flush."""
    ids = sorted(set(device_ids))
    back: list[str] = []
    for chunk in _chunks(ids):
        params = {"ids": list(chunk)}
        active = (_id_in(session), _DEVICES.c.status == "active")
        came_back = sorted(session.execute(
            update(_DEVICES).where(*active, _DEVICES.c.online.is_(False)).values(online=True, last_seen_at=at)
            .returning(_DEVICES.c.id), params,
        ).scalars())
        _add_events(session, [{"device_id": d, "at": at, "kind": "online", "detail": {"via": via}}
                              for d in came_back])
        back.extend(came_back)
        # Never move last_seen_at backwards (another replica may have stored a later message).
        session.execute(
            update(_DEVICES).where(*active, or_(_DEVICES.c.last_seen_at.is_(None), _DEVICES.c.last_seen_at < at))
            .values(last_seen_at=at), params,
        )
    return sorted(back)


@dataclass(frozen=True)
class SeenDevice:
    """What the liveness check needs to know of one device."""

    device_id: str
    online: bool
    status: str
    last_seen_at: datetime | None


def stale_cutoff(now: datetime, offline_after_s: float) -> datetime:
    """Devices last seen before this instant are stale."""
    if not offline_after_s > 0:
        raise ValueError(f"offline_after_s must be positive, got {offline_after_s}")
    return now - timedelta(seconds=offline_after_s)


def stale_devices(devices: Iterable[SeenDevice], now: datetime, offline_after_s: float) -> list[str]:
    """Ids of the active devices marked online whose last message is older than `offline_after_s` at
    `now` (or that were never heard from), sorted. Revoked devices keep their last state."""
    cutoff = stale_cutoff(now, offline_after_s)
    return sorted(
        d.device_id for d in devices
        if d.status == "active" and d.online and (d.last_seen_at is None or d.last_seen_at < cutoff)
    )


def offline_detail(last_seen_at: datetime | None, now: datetime, offline_after_s: float) -> dict[str, Any]:
    """The `offline` event's detail: why the device was marked offline."""
    if last_seen_at is None:
        reason = "stale: no message ever received"
        silent_s = None
    else:
        silent_s = round((now - last_seen_at).total_seconds(), 1)
        reason = f"stale: no message for {silent_s:.0f} s"
    return {
        "via": "sweep",
        "reason": reason,
        "silent_s": silent_s,
        "offline_after_s": offline_after_s,
        "last_seen_at": None if last_seen_at is None else last_seen_at.isoformat(),
    }


def _stale_where(cutoff: datetime) -> tuple[ColumnElement[bool], ...]:
    return (
        _DEVICES.c.status == "active",
        _DEVICES.c.online.is_(True),
        or_(_DEVICES.c.last_seen_at.is_(None), _DEVICES.c.last_seen_at < cutoff),
    )


def mark_stale_offline(session: Session, *, now: datetime, offline_after_s: float) -> list[str]:
    """Mark offline every device silent for longer than `offline_after_s` at `now`, with an `offline`
    event each; returns their ids. The caller commits.

    Idempotent and safe against other replicas doing the same: the UPDATE repeats the stale condition,
    so a row another replica already flipped (PostgreSQL re-checks the WHERE after the row lock) or a
    device heard from since the SELECT is not touched, and only rows this UPDATE changed get an event."""
    cutoff = stale_cutoff(now, offline_after_s)
    rows = session.execute(
        select(_DEVICES.c.id, _DEVICES.c.online, _DEVICES.c.status, _DEVICES.c.last_seen_at)
        .where(*_stale_where(cutoff))
    ).all()
    chosen = stale_devices((SeenDevice(*row) for row in rows), now, offline_after_s)
    return mark_offline(session, chosen, now=now, offline_after_s=offline_after_s)


def mark_offline(session: Session, device_ids: Sequence[str], *, now: datetime, offline_after_s: float
                 ) -> list[str]:
    """Mark offline those of `device_ids` that are still stale at `now`; returns the ids changed."""
    cutoff = stale_cutoff(now, offline_after_s)
    marked: list[str] = []
    for chunk in _chunks(sorted(device_ids)):
        rows = session.execute(
            update(_DEVICES).where(_id_in(session), *_stale_where(cutoff)).values(online=False)
            .returning(_DEVICES.c.id, _DEVICES.c.last_seen_at), {"ids": list(chunk)},
        ).all()
        changed: list[tuple[str, datetime | None]] = sorted((row[0], row[1]) for row in rows)
        _add_events(session, [
            {"device_id": d, "at": now, "kind": "offline", "detail": offline_detail(seen, now, offline_after_s)}
            for d, seen in changed
        ])
        marked.extend(d for d, _ in changed)
    return marked


def history_query(device_id: str) -> Select[DeviceEvent]:
    return select(DeviceEvent).where(DeviceEvent.device_id == device_id).order_by(DeviceEvent.id.desc())


class DatabaseFleetSink:
    """The MQTT bridge's `FleetSink`: applies decoded device messages to the registry.

    Times are the controller's receive times: a device clock may be wrong (no RTC, 1970 after a
    reboot); the device's own `sent_at` is kept in the history detail for diagnosis.
    """

    def __init__(self, session_factory: sessionmaker[Session]) -> None:
        self._sessions = session_factory

    def on_status(self, status: wire.Status) -> None:
        active = status.active
        with self._sessions() as session:
            applied = record_status(
                session,
                status.device_id,
                model=active.model if active else None,
                version=active.version if active else None,
                variant=active.variant if active else None,
                update_state=status.state,
                last_error=status.last_error,
            )
            if applied:
                session.commit()

    def on_event(self, event: wire.Event) -> None:
        detail: dict[str, Any] = {
            "seq": event.seq,
            "sent_at": event.sent_at,
            "assignment_version": event.assignment_version,
            "rollout_id": event.rollout_id,
            "model": event.model,
            "version": event.version,
            "reason": event.reason,
            "details": dict(event.details),
        }
        with self._sessions() as session:
            if record_event(session, event.device_id, event.kind, detail):
                session.commit()

    def on_presence(self, presence: wire.Presence) -> None:
        with self._sessions() as session:
            if record_presence(session, presence.device_id, online=presence.state == "online"):
                session.commit()


class LivenessSweeper:
    """The I/O shell of the liveness check: one transaction per sweep, `now` from the injected clock."""

    def __init__(self, session_factory: sessionmaker[Session], *, offline_after_s: float,
                 clock: Callable[[], datetime] = utcnow) -> None:
        stale_cutoff(clock(), offline_after_s)  # refuses a non-positive threshold now, not at the first sweep
        self._sessions = session_factory
        self.offline_after_s = offline_after_s
        self._clock = clock

    @property
    def every_s(self) -> float:
        """How often to sweep: a device is marked offline at most this long after it became stale."""
        return min(30.0, max(1.0, self.offline_after_s / 6))

    def sweep(self) -> list[str]:
        with self._sessions() as session:
            marked = mark_stale_offline(session, now=self._clock(), offline_after_s=self.offline_after_s)
            session.commit()
        if marked:
            log.info("marked %d silent devices offline (no message for %g s): %s", len(marked),
                     self.offline_after_s, ", ".join(marked[:20]) + (" ..." if len(marked) > 20 else ""))
        return marked
