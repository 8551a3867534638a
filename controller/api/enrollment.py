"""Enrollment routes: admin-managed one-time tokens, the public enroll call, CA material, broker file.

`POST /api/v1/enroll` is the only route besides `/healthz` that takes no operator token: the
enrollment token in the body is the credential, and the route is rate-limited per client address.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Body, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from controller.api.context import ControllerContext
from controller.api.deps import Context, DbSession, RowId
from controller.api.errors import AUTH_ERRORS, ErrorResponse, error_responses
from controller.api.pagination import Page, Pagination, make_page, paginate
from controller.auth import AdminPrincipal, ViewerPrincipal
from controller.db.models import EnrollmentToken
from controller.enrollment import service
from controller.enrollment.credentials import password_file_text
from controller.errors import Unavailable

router = APIRouter(prefix="/api/v1", tags=["enrollment"])

MAX_PROFILE_BYTES = 64 * 1024


class EnrollmentTokenCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "tags": ["site:lyon", "line-3"],
                    "hardware_class": "jetson-orin-nano",
                    "ttl_s": 86400,
                    "note": "line 3 cameras",
                }
            ]
        },
    )
    tags: list[str] = Field(default_factory=list, max_length=32)
    hardware_class: str | None = Field(None, max_length=64)
    ttl_s: float | None = Field(None, gt=0, le=90 * 24 * 3600)
    note: str = Field("", max_length=256)


class EnrollmentTokenOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    prefix: str
    note: str
    tags: list[str]
    hardware_class: str | None
    created_by: str
    created_at: datetime
    expires_at: datetime
    used_at: datetime | None
    used_by_device: str | None
    revoked_at: datetime | None


class EnrollmentTokenCreated(EnrollmentTokenOut):
    token: str = Field(description="The secret; shown only in this answer.")


class EnrollRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "token": "efe_…",
                    "csr": "-----BEGIN CERTIFICATE REQUEST-----\n…",
                    "hardware_class": "x86_64-avx2",
                    "hardware_profile": {
                        "arch": "x86_64",
                        "cpu_flags": ["avx2"],
                        "memory_mb": 7820,
                        "runtimes": ["onnxruntime", "openvino"],
                    },
                }
            ]
        },
    )
    token: str = Field(min_length=8, max_length=128)
    csr: str | None = Field(None, max_length=16384, description="PEM CSR; proves key possession.")
    public_key: str | None = Field(None, max_length=16384, description="PEM public key (instead of csr).")
    hardware_class: str = Field(min_length=1, max_length=64)
    hardware_profile: dict[str, Any] = Field(default_factory=dict)
    device_id: str | None = Field(None, max_length=63, description="Requested id; generated when absent.")

    @field_validator("hardware_profile")
    @classmethod
    def _bounded(cls, value: dict[str, Any]) -> dict[str, Any]:
        size = len(json.dumps(value, separators=(",", ":")))
        if size > MAX_PROFILE_BYTES:
            raise ValueError(f"hardware_profile is {size} bytes of JSON; at most {MAX_PROFILE_BYTES}")
        return value


class MqttCredentials(BaseModel):
    host: str
    port: int
    tls: bool
    username: str
    password: str = Field(description="Shown only in this answer.")
    client_id: str
    topic_prefix: str


class EnrollResponse(BaseModel):
    device_id: str
    certificate: str
    certificate_serial: str
    certificate_not_after: datetime
    ca_certificate: str
    mqtt: MqttCredentials
    api_url: str
    tags: list[str]
    hardware_class: str
    image_repository_root: dict[str, Any]
    director_root: dict[str, Any]


@router.post(
    "/enrollment-tokens",
    response_model=EnrollmentTokenCreated,
    status_code=status.HTTP_201_CREATED,
    responses=AUTH_ERRORS,
    summary="Create a one-time enrollment token",
)
def create_enrollment_token(
    body: Annotated[EnrollmentTokenCreate, Body()], db: DbSession, ctx: Context, who: AdminPrincipal
) -> EnrollmentTokenCreated:
    row, secret = service.create_enrollment_token(
        db,
        created_by=who.name,
        ttl_s=body.ttl_s or ctx.settings.enrollment_token_ttl_s,
        tags=body.tags,
        hardware_class=body.hardware_class,
        note=body.note,
    )
    db.commit()
    return EnrollmentTokenCreated(**EnrollmentTokenOut.model_validate(row).model_dump(), token=secret)


@router.get(
    "/enrollment-tokens",
    response_model=Page[EnrollmentTokenOut],
    responses=AUTH_ERRORS,
    summary="List enrollment tokens",
)
def list_enrollment_tokens(db: DbSession, page: Pagination, who: AdminPrincipal) -> Page[EnrollmentTokenOut]:
    rows, total = paginate(db, select(EnrollmentToken).order_by(EnrollmentToken.id.desc()), page)
    return make_page([EnrollmentTokenOut.model_validate(r) for r in rows], total, page)


@router.delete(
    "/enrollment-tokens/{token_id}",
    response_model=EnrollmentTokenOut,
    responses={**AUTH_ERRORS, **error_responses(404)},
    summary="Revoke an unused enrollment token",
)
def revoke_enrollment_token(token_id: RowId, db: DbSession, who: AdminPrincipal) -> EnrollmentTokenOut:
    row = service.revoke_enrollment_token(db, token_id)
    db.commit()
    return EnrollmentTokenOut.model_validate(row)


@router.post(
    "/enroll",
    response_model=EnrollResponse,
    status_code=status.HTTP_201_CREATED,
    summary="Enroll a device (public; the enrollment token is the credential)",
    responses={s: {"model": ErrorResponse} for s in (401, 403, 409, 413, 422, 429, 503)},
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": EnrollRequest.model_json_schema()}},
        }
    },
)
async def enroll(request: Request, ctx: Context) -> EnrollResponse:
    # Counted before the body is parsed: malformed floods are limited like token guesses.
    ctx.enrollment_limiter.check(request.client.host if request.client else "unknown")
    try:
        body = EnrollRequest.model_validate_json(await request.body())
    except ValidationError as e:
        raise RequestValidationError([{**err, "loc": ("body", *err["loc"])} for err in e.errors()]) from e
    return await run_in_threadpool(_enroll, body, ctx)


def _enroll(body: EnrollRequest, ctx: ControllerContext) -> EnrollResponse:
    if ctx.trust_roots is None:
        raise Unavailable("this controller has no signing keys yet: run `edgefleet keys init`")
    with ctx.session_factory() as db:
        result = service.enroll(
            db,
            service.EnrollmentRequest(
                token=body.token,
                hardware_class=body.hardware_class,
                hardware_profile=body.hardware_profile,
                csr_pem=body.csr,
                public_key_pem=body.public_key,
                requested_id=body.device_id,
            ),
            ca=ctx.ca,
            trust_roots=ctx.trust_roots,
            cert_validity_days=ctx.settings.device_cert_validity_days,
        )
        db.commit()
    device = result.device
    s = ctx.settings
    return EnrollResponse(
        device_id=device.id,
        certificate=result.certificate_pem,
        certificate_serial=device.cert_serial,
        certificate_not_after=device.cert_not_after,
        ca_certificate=result.ca_certificate_pem,
        mqtt=MqttCredentials(
            host=s.mqtt_host,
            port=s.mqtt_port,
            tls=s.mqtt_tls,
            username=device.mqtt_username,
            password=result.mqtt_password,
            client_id=device.id,
            topic_prefix=f"edgefleet/v1/{device.id}/",
        ),
        api_url=s.public_url,
        tags=result.tags,
        hardware_class=device.hardware_class,
        image_repository_root=result.image_repository_root,
        director_root=result.director_root,
    )


#: The CA routes answer PEM with its own media type; documented so clients know what arrives.
PEM_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {"content": {"application/x-pem-file": {"schema": {"type": "string"}}}}
}


@router.get(
    "/ca/certificate",
    response_class=PlainTextResponse,
    responses={**AUTH_ERRORS, **PEM_RESPONSE},
    summary="The fleet CA certificate (PEM)",
)
def ca_certificate(ctx: Context, who: ViewerPrincipal) -> PlainTextResponse:
    return PlainTextResponse(ctx.ca.certificate_pem, media_type="application/x-pem-file")


@router.get(
    "/ca/crl",
    response_class=PlainTextResponse,
    responses={**AUTH_ERRORS, **PEM_RESPONSE},
    summary="Revocation list of device certificates (PEM), signed by the fleet CA",
)
def ca_crl(db: DbSession, ctx: Context, who: ViewerPrincipal) -> PlainTextResponse:
    return PlainTextResponse(
        ctx.ca.crl_pem(service.revoked_certificates(db)), media_type="application/x-pem-file"
    )


@router.get(
    "/broker/password-file",
    response_class=PlainTextResponse,
    responses=AUTH_ERRORS,
    summary="Mosquitto password file of every active device (revoked devices are absent)",
)
def broker_password_file(db: DbSession, who: AdminPrincipal) -> PlainTextResponse:
    return PlainTextResponse(password_file_text(service.broker_credentials(db)))
