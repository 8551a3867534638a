"""The device registry: queries by tag, class and model version, and what devices last reported.

The MQTT bridge calls `record_presence` / `record_status` / `record_event` as messages arrive; the API
reads through `device_query`. A revoked device's reports are ignored: its credential no longer works
on the broker, and a late retained message must not bring it back to life in the registry.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, select
from sqlalchemy.orm import Session, sessionmaker

from agent import wire
from controller.db.base import utcnow
from controller.db.models import Device, DeviceEvent, DeviceTag
from controller.enrollment.service import check_hardware_class, check_tags
from controller.errors import NotFound


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


def record_presence(session: Session, device_id: str, *, online: bool, at: datetime | None = None) -> bool:
    """Apply an `online` message; returns False when the device is unknown or revoked."""
    device = _active(session, device_id)
    if device is None:
        return False
    at = at or utcnow()
    if device.online != online:
        session.add(
            DeviceEvent(device_id=device_id, at=at, kind="online" if online else "offline", detail={})
        )
    device.online = online
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
    device.last_seen_at = at
    return True


def record_event(
    session: Session, device_id: str, kind: str, detail: dict[str, Any], *, at: datetime | None = None
) -> bool:
    """Append an agent-reported event (update lifecycle, gate report) to the history."""
    device = _active(session, device_id)
    if device is None:
        return False
    at = at or utcnow()
    session.add(DeviceEvent(device_id=device_id, at=at, kind=kind[:64], detail=detail))
    device.last_seen_at = at
    return True


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
