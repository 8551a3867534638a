"""Certificate renewal (EST "simplereenroll" in spirit): a device trades its current certificate for a new one.

    device ── device credential + CSR (new key, CN = device id) + proof (current key signs the CSR) ──▶
        ├── device active?                          no → 403 (a revoked device renews nothing)
        ├── CSR signature verifies, CN = caller?    no → 422 / 403
        ├── proof: `certificate` is a valid cert of this device and its key signed the CSR
        ├── new key: fresh, or the proving certificate's own; never another device's or a retired one
        ├── issue, record the serial and key, device row points at the new certificate
        └── every other certificate of the device except the one that proved itself is superseded

Which certificates are valid afterwards: the one the device proved it holds *and* the new one. The
old one stays valid until it expires, or until the device is seen using the new one (its next renewal
is signed by the new key, or the new certificate reaches the API through the mutual-TLS proxy). The
broker checks certificates offline (CA + CRL) and cannot tell us which one a device used, so "first
use" cannot be observed reliably; expiry is what bounds the overlap. In exchange a device that dies
between the controller's answer and its own file swap still holds a valid pair and simply renews again
(which supersedes the certificate it never received). At most two certificates per device are valid.

The proof matters because device routes also accept the device token: without it a token thief could
mint certificates for a key of its own choosing while the real device is never told.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.x509.oid import NameOID
from sqlalchemy import select
from sqlalchemy.orm import Session

from controller.db.base import utcnow
from controller.db.models import Device, DeviceCertificate, DeviceEvent
from controller.enrollment.ca import MAX_KEY_PEM_BYTES, FleetCA, public_key_from_csr, public_key_sha256
from controller.errors import Forbidden, InvalidInput

#: Domain separation: a renewal proof can never be replayed as a signature over anything else.
PROOF_CONTEXT = b"edgefleet-certificate-renewal-v1\x00"
MAX_PROOF_BYTES = 1024


@dataclass(frozen=True)
class RenewalRequest:
    csr_pem: str
    certificate_pem: str  # the certificate the device holds now
    proof_b64: str  # its key's signature over PROOF_CONTEXT + device id + NUL + CSR PEM


@dataclass(frozen=True)
class RenewalResult:
    device: Device
    certificate_pem: str
    ca_certificate_pem: str
    previous_serial: str
    key_rotated: bool


def proof_message(device_id: str, csr_pem: str) -> bytes:
    """The bytes the current key signs; the agent builds the same."""
    return PROOF_CONTEXT + device_id.encode("ascii") + b"\x00" + csr_pem.encode("ascii")


def _verify_signature(key: object, signature: bytes, message: bytes) -> None:
    if isinstance(key, ec.EllipticCurvePublicKey):
        key.verify(signature, message, ec.ECDSA(hashes.SHA256()))
    elif isinstance(key, ed25519.Ed25519PublicKey):
        key.verify(signature, message)
    elif isinstance(key, rsa.RSAPublicKey):
        key.verify(signature, message, padding.PKCS1v15(), hashes.SHA256())
    else:
        raise InvalidSignature(f"unsupported key type {type(key).__name__}")


def _csr_subject_is(csr_pem: str, device_id: str) -> None:
    csr = x509.load_pem_x509_csr(csr_pem.encode("ascii"))
    names = [str(a.value) for a in csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    if names != [device_id]:
        raise Forbidden(f"the CSR names {names or 'no device'}; this credential belongs to device {device_id}")


def _holder(session: Session, device: Device, request: RenewalRequest, ca: FleetCA, now: datetime) -> DeviceCertificate:
    """The certificate the device proved it holds: ours, valid, not superseded, and its key signed the CSR."""
    if len(request.certificate_pem) > MAX_KEY_PEM_BYTES or len(request.proof_b64) > MAX_PROOF_BYTES:
        raise InvalidInput("certificate or proof is too large")
    try:
        cert = x509.load_pem_x509_certificate(request.certificate_pem.encode("ascii"))
        cert.verify_directly_issued_by(ca.certificate)
    except (ValueError, TypeError, UnicodeEncodeError, InvalidSignature) as e:
        raise Forbidden("certificate is not one issued by the fleet CA") from e
    serial = format(cert.serial_number, "x")
    row = session.get(DeviceCertificate, serial)
    if row is None and serial == device.cert_serial:
        # Enrolled before certificates were recorded one by one: adopt the device's only certificate.
        row = DeviceCertificate(
            serial=serial, device_id=device.id, public_key_sha256=device.public_key_sha256,
            issued_at=device.enrolled_at, not_after=device.cert_not_after,
        )
        session.add(row)
    if row is None or row.device_id != device.id:
        raise Forbidden(f"certificate {serial} was not issued to device {device.id}")
    if row.superseded_at is not None:
        raise Forbidden(f"certificate {serial} was superseded at {row.superseded_at.isoformat()}")
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise Forbidden(f"certificate {serial} is outside its validity period; the device must enroll again")
    try:
        signature = base64.b64decode(request.proof_b64, validate=True)
        _verify_signature(cert.public_key(), signature, proof_message(device.id, request.csr_pem))
    except (binascii.Error, ValueError, InvalidSignature) as e:
        raise Forbidden(f"proof does not verify with the key of certificate {serial}") from e
    return row


def _refuse_barred_key(session: Session, device: Device, key_digest: str, holder: DeviceCertificate) -> None:
    rows = session.scalars(select(DeviceCertificate).where(DeviceCertificate.public_key_sha256 == key_digest)).all()
    for row in rows:
        if row.device_id != device.id:
            raise Forbidden(f"this key belongs to device {row.device_id}; a key serves one device only")
        if key_digest != holder.public_key_sha256:
            # Only the key the device proved it holds may be certified again; any other key it once
            # had is retired (its certificate superseded now or on this renewal) and never returns.
            raise Forbidden(f"this key was retired with certificate {row.serial}; renew with a fresh key")
    other = session.scalar(select(Device).where(Device.public_key_sha256 == key_digest, Device.id != device.id))
    if other is not None:
        raise Forbidden(f"this key belongs to device {other.id}; a key serves one device only")


def renew_certificate(
    session: Session, device_id: str, request: RenewalRequest, *, ca: FleetCA, cert_validity_days: int
) -> RenewalResult:
    now = utcnow()
    # Row lock (PostgreSQL): two renewals of one device run one after the other, so the second sees
    # the first's certificate and supersedes it, keeping at most two valid.
    device = session.get(Device, device_id, with_for_update=True)
    if device is None or device.status != "active":
        raise Forbidden(f"device {device_id} is revoked or unknown; it cannot renew its certificate")
    public_key = public_key_from_csr(request.csr_pem)
    _csr_subject_is(request.csr_pem, device_id)
    holder = _holder(session, device, request, ca, now)
    key_digest = public_key_sha256(public_key)
    _refuse_barred_key(session, device, key_digest, holder)

    issued = ca.issue(device_id, public_key, validity_days=cert_validity_days)
    session.add(
        DeviceCertificate(
            serial=issued.serial_hex, device_id=device_id, public_key_sha256=issued.public_key_sha256,
            issued_at=now, not_after=issued.not_after,
        )
    )
    # Only the certificate the device proved it holds survives beside the new one: a renewal answer
    # that never reached the device (or an older certificate still in its grace period) is retired.
    superseded = []
    for row in session.scalars(
        select(DeviceCertificate).where(
            DeviceCertificate.device_id == device_id,
            DeviceCertificate.superseded_at.is_(None),
            DeviceCertificate.serial.not_in([holder.serial, issued.serial_hex]),
        )
    ):
        row.superseded_at = now
        superseded.append(row.serial)
    device.cert_serial = issued.serial_hex
    device.cert_not_after = issued.not_after
    device.public_key_sha256 = issued.public_key_sha256
    key_rotated = key_digest != holder.public_key_sha256
    session.add(
        DeviceEvent(
            device_id=device_id,
            at=now,
            kind="certificate_renewed",
            detail={
                "previous_serial": holder.serial,
                "cert_serial": issued.serial_hex,
                "not_after": issued.not_after.isoformat(),
                "key_rotated": key_rotated,
                "superseded": superseded,
            },
        )
    )
    session.flush()
    return RenewalResult(device, issued.pem, ca.certificate_pem, holder.serial, key_rotated)


def note_certificate_use(session: Session, device: Device, serial: str) -> bool:
    """A device authenticated with `serial`; False when that certificate may not be used.

    Seeing the device's newest certificate in use retires every older one (first use after renewal).
    """
    now = utcnow()
    row = session.get(DeviceCertificate, serial)
    if row is None:
        return serial == device.cert_serial  # enrolled before certificates were recorded one by one
    if row.device_id != device.id or row.superseded_at is not None or row.not_after <= now:
        return False
    if serial == device.cert_serial:
        older = session.scalars(
            select(DeviceCertificate).where(
                DeviceCertificate.device_id == device.id,
                DeviceCertificate.superseded_at.is_(None),
                DeviceCertificate.serial != serial,
            )
        ).all()
        for old in older:
            old.superseded_at = now
        if older:
            session.commit()
    return True


def barred_certificates(session: Session) -> dict[str, datetime]:
    """Serial → date for the CRL: every unexpired certificate of a revoked device, and superseded ones."""
    now = utcnow()
    barred: dict[str, datetime] = {}
    rows = session.execute(
        select(DeviceCertificate.serial, DeviceCertificate.superseded_at, Device.status, Device.revoked_at)
        .join(Device, Device.id == DeviceCertificate.device_id)
        .where(DeviceCertificate.not_after > now)
        .where((Device.status == "revoked") | DeviceCertificate.superseded_at.is_not(None))
    ).all()
    for serial, superseded_at, status, revoked_at in rows:
        at = revoked_at if status == "revoked" and revoked_at is not None else superseded_at
        if at is not None:
            barred[serial] = at
    return barred
