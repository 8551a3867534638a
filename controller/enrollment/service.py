"""Enrollment: one-time tokens, device identity, and revocation.

    admin ── create token (tags, hardware class, expiry) ──▶ efe_… (shown once)
    device ── token + CSR/public key + hardware profile ──▶ enroll()
        ├── token consumed atomically (UPDATE … WHERE used_at IS NULL): two devices racing get one winner
        ├── certificate from the fleet CA, CN = device id
        ├── MQTT username/password (password shown once, stored as a Mosquitto hash)
        └── pinned roots: image repository root.json + director root
    admin ── revoke(device) ──▶ status revoked, MQTT credential dropped, certificate on the CRL

A revoked device's keys stay recorded (every certificate it ever had, `DeviceCertificate`), so
presenting one again with a fresh token is refused. Renewal lives in `renewal.py`.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from controller.auth import generate_secret, hash_secret
from controller.db.base import utcnow
from controller.db.models import Device, DeviceCertificate, DeviceEvent, DeviceTag, EnrollmentToken
from controller.enrollment.ca import FleetCA, public_key_from_csr, public_key_from_pem, public_key_sha256
from controller.enrollment.credentials import generate_password, hash_password
from controller.enrollment.renewal import barred_certificates
from controller.enrollment.trust import TrustRoots
from controller.errors import Conflict, Forbidden, InvalidInput, NotFound, Unauthenticated

ENROLLMENT_TOKEN_PREFIX = "efe_"
DEVICE_ID_RE = re.compile(r"^[a-z0-9][a-z0-9-]{2,62}$")
TAG_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:=-]{0,63}$")
HARDWARE_CLASS_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
MAX_TAGS = 32


def check_tags(tags: list[str]) -> list[str]:
    if len(tags) > MAX_TAGS:
        raise InvalidInput(f"at most {MAX_TAGS} tags; got {len(tags)}")
    for tag in tags:
        if not TAG_RE.match(tag):
            raise InvalidInput(f"tag {tag!r} must match {TAG_RE.pattern}")
    return sorted(set(tags))


def check_hardware_class(value: str) -> str:
    if not HARDWARE_CLASS_RE.match(value):
        raise InvalidInput(f"hardware class {value!r} must match {HARDWARE_CLASS_RE.pattern}")
    return value


def create_enrollment_token(
    session: Session,
    *,
    created_by: str,
    ttl_s: float,
    tags: list[str] | None = None,
    hardware_class: str | None = None,
    note: str = "",
) -> tuple[EnrollmentToken, str]:
    if ttl_s <= 0:
        raise InvalidInput(f"ttl_s must be positive; got {ttl_s}")
    secret = generate_secret(ENROLLMENT_TOKEN_PREFIX)
    row = EnrollmentToken(
        token_hash=hash_secret(secret),
        prefix=secret[: len(ENROLLMENT_TOKEN_PREFIX) + 6],
        note=note[:256],
        tags=check_tags(tags or []),
        hardware_class=check_hardware_class(hardware_class) if hardware_class else None,
        created_by=created_by,
        created_at=utcnow(),
        expires_at=utcnow() + timedelta(seconds=ttl_s),
    )
    session.add(row)
    session.flush()
    return row, secret


def revoke_enrollment_token(session: Session, token_id: int) -> EnrollmentToken:
    row = session.get(EnrollmentToken, token_id)
    if row is None:
        raise NotFound(f"enrollment token {token_id} does not exist")
    if row.revoked_at is None:
        row.revoked_at = utcnow()
    return row


@dataclass(frozen=True)
class EnrollmentRequest:
    token: str
    hardware_class: str
    hardware_profile: dict[str, Any]
    csr_pem: str | None = None
    public_key_pem: str | None = None
    requested_id: str | None = None


@dataclass(frozen=True)
class EnrollmentResult:
    device: Device
    certificate_pem: str
    ca_certificate_pem: str
    mqtt_password: str
    image_repository_root: dict[str, Any]
    director_root: dict[str, Any]
    tags: list[str] = field(default_factory=list)


def _consume_token(session: Session, secret: str, device_id: str, now: datetime) -> EnrollmentToken:
    row = session.scalar(select(EnrollmentToken).where(EnrollmentToken.token_hash == hash_secret(secret)))
    if row is None:
        raise Unauthenticated("enrollment token is unknown")
    if row.revoked_at is not None:
        raise Unauthenticated(f"enrollment token {row.prefix}… was revoked")
    if row.used_at is not None:
        raise Unauthenticated(f"enrollment token {row.prefix}… was already used")
    if row.expires_at <= now:
        raise Unauthenticated(f"enrollment token {row.prefix}… expired at {row.expires_at.isoformat()}")
    # The conditional update is the one-time guarantee: of two racing requests only one changes a row.
    result = session.execute(
        update(EnrollmentToken)
        .where(EnrollmentToken.id == row.id, EnrollmentToken.used_at.is_(None))
        .values(used_at=now, used_by_device=device_id)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        raise Unauthenticated(f"enrollment token {row.prefix}… was already used")
    return row


def enroll(
    session: Session,
    request: EnrollmentRequest,
    *,
    ca: FleetCA,
    trust_roots: TrustRoots,
    cert_validity_days: int,
) -> EnrollmentResult:
    """Enroll one device; the caller commits. Any error leaves the token unused (rollback)."""
    if (request.csr_pem is None) == (request.public_key_pem is None):
        raise InvalidInput("give exactly one of csr and public_key")
    hardware_class = check_hardware_class(request.hardware_class)
    public_key = (
        public_key_from_csr(request.csr_pem)
        if request.csr_pem is not None
        else public_key_from_pem(request.public_key_pem or "")
    )
    if request.requested_id is not None and not DEVICE_ID_RE.match(request.requested_id):
        raise InvalidInput(f"device id {request.requested_id!r} must match {DEVICE_ID_RE.pattern}")
    device_id = request.requested_id or f"dev-{secrets.token_hex(6)}"
    now = utcnow()
    token = _consume_token(session, request.token, device_id, now)
    if token.hardware_class is not None and token.hardware_class != hardware_class:
        raise Forbidden(
            f"enrollment token {token.prefix}… is bound to hardware class {token.hardware_class!r}; "
            f"device reported {hardware_class!r}"
        )
    # Fetch the roots before writing anything: a controller without keys cannot enroll anyone.
    image_root, director_root = trust_roots.image_repository_root(), trust_roots.director_root()

    key_digest = public_key_sha256(public_key)
    holder = session.scalar(select(Device).where(Device.public_key_sha256 == key_digest))
    if holder is None:  # a key the device renewed away from is still that device's
        previous = session.scalar(
            select(DeviceCertificate).where(DeviceCertificate.public_key_sha256 == key_digest).limit(1)
        )
        holder = session.get(Device, previous.device_id) if previous is not None else None
    if holder is not None:
        if holder.status == "revoked":
            raise Forbidden(
                f"this key belongs to revoked device {holder.id}; a revoked device cannot re-enroll"
            )
        raise Conflict(f"this key is already enrolled as device {holder.id}")
    if session.get(Device, device_id) is not None:
        raise Conflict(f"device id {device_id} is already taken")

    issued = ca.issue(device_id, public_key, validity_days=cert_validity_days)
    password = generate_password()
    device = Device(
        id=device_id,
        status="active",
        hardware_class=hardware_class,
        hardware_profile=request.hardware_profile,
        enrolled_at=now,
        cert_serial=issued.serial_hex,
        cert_not_after=issued.not_after,
        public_key_sha256=issued.public_key_sha256,
        mqtt_username=device_id,
        mqtt_password_hash=hash_password(password),
        online=False,
    )
    device.tags = [DeviceTag(tag=t) for t in token.tags]
    session.add(device)
    session.add(
        DeviceCertificate(
            serial=issued.serial_hex, device_id=device_id, public_key_sha256=issued.public_key_sha256,
            issued_at=now, not_after=issued.not_after,
        )
    )
    session.add(
        DeviceEvent(
            device_id=device_id,
            at=now,
            kind="enrolled",
            detail={
                "token": token.prefix,
                "hardware_class": hardware_class,
                "cert_serial": issued.serial_hex,
            },
        )
    )
    session.flush()
    return EnrollmentResult(
        device=device,
        certificate_pem=issued.pem,
        ca_certificate_pem=ca.certificate_pem,
        mqtt_password=password,
        image_repository_root=image_root,
        director_root=director_root,
        tags=list(token.tags),
    )


def revoke_device(session: Session, device_id: str, *, reason: str, by: str) -> Device:
    """Revoke a device: its MQTT credential is dropped and its certificate goes on the CRL."""
    device = session.get(Device, device_id)
    if device is None:
        raise NotFound(f"device {device_id} does not exist")
    if device.status != "revoked":
        now = utcnow()
        device.status = "revoked"
        device.revoked_at = now
        device.revoke_reason = reason[:256]
        device.mqtt_password_hash = ""
        device.online = False
        session.add(
            DeviceEvent(device_id=device_id, at=now, kind="revoked", detail={"reason": reason, "by": by})
        )
    return device


def broker_credentials(session: Session) -> list[tuple[str, str]]:
    """(username, Mosquitto hash) of every active device: the broker's password file."""
    rows = session.execute(
        select(Device.mqtt_username, Device.mqtt_password_hash).where(Device.status == "active")
    ).all()
    return [(u, h) for u, h in rows if h]


def revoked_certificates(session: Session) -> list[tuple[str, datetime]]:
    """The CRL's entries: every certificate of a revoked device, and certificates superseded by renewal."""
    rows = session.execute(
        select(Device.cert_serial, Device.revoked_at).where(Device.status == "revoked")
    ).all()
    barred = {s: at for s, at in rows if at is not None}
    barred.update(barred_certificates(session))
    return sorted(barred.items())
