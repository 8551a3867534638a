"""Device credentials on the controller API: accepted on device routes, meaningless everywhere else.

A device proves who it is with one of:

- its **device token**: HTTP Basic `<device id>:<MQTT password>` (the 256-bit secret it received at
  enrollment), checked against the stored Mosquitto hash; or
- its **certificate**, when a TLS terminator in front of the controller verified the client certificate
  and forwards it in `X-Client-Certificate` (URL-escaped PEM, nginx's `$ssl_client_escaped_cert`). The
  header is honoured only when the router is built with `trust_proxy_certificate=True`, because anyone
  can paste a public certificate into a header; only the TLS handshake proves the key. Even then the
  certificate is checked again here: issued by the fleet CA, within its validity, and a serial recorded
  for an *active* device and not superseded, so a revoked device is refused even if the proxy's CRL is
  stale. Through a renewal's overlap the previous certificate is accepted too, until the new one is
  seen here (see `controller.enrollment.renewal`).

`POST /api/v1/device/certificate/renew` lives here with the other device routes.

Operator routes (`controller.auth.RequireRole`) accept only `Bearer efo_…` tokens, and device routes
refuse those: the two credential kinds never cross. A revoked device has no password hash left and its
serial no longer matches an active device, so both of its credentials stop working at once.
"""

from __future__ import annotations

import base64
import binascii
import urllib.parse
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Annotated, Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509.oid import NameOID
from fastapi import APIRouter, Body, Depends, Request
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.orm import Session

from controller.api.context import ControllerContext
from controller.api.deps import Context, DbSession
from controller.api.errors import AUTH_ERRORS, error_responses
from controller.db.models import Device
from controller.enrollment import renewal
from controller.enrollment.ratelimit import RateLimiter
from controller.enrollment.renewal import note_certificate_use
from controller.errors import RateLimited, Unauthenticated
from controller.mqtt.errors import AuthFileError
from controller.mqtt.mosquitto_auth import verify_password

CERT_HEADER = "X-Client-Certificate"
MAX_CERT_HEADER_BYTES = 16 * 1024


@dataclass(frozen=True)
class DeviceIdentity:
    device_id: str
    method: str  # "token" | "certificate"


def _active(db: Session, device_id: str) -> Device:
    device = db.get(Device, device_id)
    if device is None or device.status != "active":
        raise Unauthenticated("the device credential is unknown or revoked")
    return device


def authenticate_token(db: Session, authorization: str) -> DeviceIdentity:
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() != "basic":
        raise Unauthenticated("device routes take a device credential (HTTP Basic device id and token)")
    try:
        device_id, sep, password = base64.b64decode(value.strip(), validate=True).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError) as e:
        raise Unauthenticated("malformed Basic credential") from e
    if not sep or not device_id or not password:
        raise Unauthenticated("malformed Basic credential")
    device = _active(db, device_id)
    try:
        ok = bool(device.mqtt_password_hash) and verify_password(password, device.mqtt_password_hash)
    except AuthFileError:
        ok = False
    if not ok:
        raise Unauthenticated("the device credential is unknown or revoked")
    return DeviceIdentity(device.id, "token")


def authenticate_certificate(db: Session, header_value: str, ca: x509.Certificate) -> DeviceIdentity:
    if len(header_value) > MAX_CERT_HEADER_BYTES:
        raise Unauthenticated("client certificate header is too large")
    try:
        cert = x509.load_pem_x509_certificate(urllib.parse.unquote(header_value).encode("ascii"))
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, UnicodeEncodeError, InvalidSignature) as e:
        raise Unauthenticated("client certificate is not one issued by the fleet CA") from e
    now = datetime.now(timezone.utc)
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise Unauthenticated("client certificate is outside its validity period")
    names = [str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    if len(names) != 1:
        raise Unauthenticated("client certificate must name exactly one device")
    device = _active(db, names[0])
    # The previous certificate stays valid through a renewal's overlap; using the newest one ends it.
    if not note_certificate_use(db, device, format(cert.serial_number, "x")):
        raise Unauthenticated("client certificate is superseded or not the device's")
    return DeviceIdentity(device.id, "certificate")


class RequireDevice:
    """Dependency: the calling device, from its certificate (trusted proxy) or its device token."""

    def __init__(self, *, trust_proxy_certificate: bool = False) -> None:
        self.trust_proxy_certificate = trust_proxy_certificate

    def __call__(self, request: Request, db: DbSession, ctx: Context) -> DeviceIdentity:
        header = request.headers.get(CERT_HEADER)
        if header and self.trust_proxy_certificate:
            return authenticate_certificate(db, header, ctx.ca.certificate)
        authorization = request.headers.get("Authorization")
        if not authorization:
            raise Unauthenticated("this route needs a device credential")
        return authenticate_token(db, authorization)


class DeviceSelf(BaseModel):
    device_id: str
    status: str
    hardware_class: str
    tags: list[str]
    cert_serial: str
    cert_not_after: datetime
    authenticated_by: str


class RenewalBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    csr: str = Field(max_length=16384, description="PEM CSR for the new key; CN = the calling device's id.")
    certificate: str = Field(max_length=16384, description="PEM of the certificate the device holds now.")
    proof: str = Field(
        max_length=1024,
        description="Base64 signature by the current key over the renewal context, device id and CSR.",
    )


class RenewalResponse(BaseModel):
    device_id: str
    certificate: str
    certificate_serial: str
    certificate_not_after: datetime
    ca_certificate: str
    previous_serial: str = Field(description="Still valid until it expires or the new one is seen in use.")
    key_rotated: bool


def device_router(*, trust_proxy_certificate: bool = False) -> APIRouter:
    """Routes for devices themselves (`/api/v1/device/…`), behind `RequireDevice` only."""
    router = APIRouter(prefix="/api/v1/device", tags=["device"], responses=AUTH_ERRORS)
    need = Depends(RequireDevice(trust_proxy_certificate=trust_proxy_certificate))
    limiters: list[RateLimiter] = []

    def renewal_limiter(ctx: ControllerContext) -> RateLimiter:
        if not limiters:  # built on first use: the router exists before the app's settings reach it
            s = ctx.settings
            limiters.append(RateLimiter(rate_per_s=s.renewal_rate_per_minute / 60, burst=s.renewal_burst))
        return limiters[0]

    @router.post(
        "/certificate/renew",
        response_model=RenewalResponse,
        responses=error_responses(403, 422, 429),
        summary="Renew the calling device's certificate (device credential + proof by the current key)",
    )
    def renew_certificate(body: Annotated[RenewalBody, Body()], db: DbSession, ctx: Context,
                          who: DeviceIdentity = need) -> Any:
        # Per device (plus the limiter's global bucket), not per address: behind a TLS proxy or a NAT
        # every device shares one address, and the caller is already authenticated.
        try:
            renewal_limiter(ctx).check(who.device_id)
        except RateLimited as e:
            raise RateLimited(f"too many certificate renewals by device {who.device_id}: {e}",
                              retry_after_s=e.retry_after_s) from e
        result = renewal.renew_certificate(
            db,
            who.device_id,
            renewal.RenewalRequest(csr_pem=body.csr, certificate_pem=body.certificate, proof_b64=body.proof),
            ca=ctx.ca,
            cert_validity_days=ctx.settings.device_cert_validity_days,
        )
        db.commit()
        device = result.device
        return RenewalResponse(
            device_id=device.id,
            certificate=result.certificate_pem,
            certificate_serial=device.cert_serial,
            certificate_not_after=device.cert_not_after,
            ca_certificate=result.ca_certificate_pem,
            previous_serial=result.previous_serial,
            key_rotated=result.key_rotated,
        )

    @router.get("/self", response_model=DeviceSelf, summary="The calling device's own record (device credential)")
    def device_self(db: DbSession, who: DeviceIdentity = need) -> Any:
        device = _active(db, who.device_id)
        return DeviceSelf(
            device_id=device.id,
            status=device.status,
            hardware_class=device.hardware_class,
            tags=sorted(t.tag for t in device.tags),
            cert_serial=device.cert_serial,
            cert_not_after=device.cert_not_after,
            authenticated_by=who.method,
        )

    return router
