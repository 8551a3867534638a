"""Device registry routes (`/api/v1/devices`): list with filters, detail, history, labels, revocation."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Body, Query
from pydantic import BaseModel, ConfigDict, Field

from controller import devices as registry
from controller.api.deps import DbSession
from controller.api.errors import AUTH_ERRORS, error_responses
from controller.api.pagination import Page, Pagination, make_page, paginate
from controller.auth import AdminPrincipal, OperatorPrincipal, ViewerPrincipal
from controller.db.models import Device
from controller.enrollment.service import revoke_device
from controller.telemetry.capture import device_capture

router = APIRouter(prefix="/api/v1/devices", tags=["devices"], responses=AUTH_ERRORS)


class DeviceOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: str
    status: str
    hardware_class: str
    tags: list[str] = Field(validation_alias="tag_names")
    online: bool
    last_seen_at: datetime | None
    enrolled_at: datetime
    revoked_at: datetime | None
    current_model: str | None
    current_version: str | None
    current_variant: str | None
    update_state: str | None
    last_error: str | None
    cert_serial: str
    cert_not_after: datetime


class DeviceDetail(DeviceOut):
    hardware_profile: dict[str, Any]
    revoke_reason: str | None


class DeviceEventOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    at: datetime
    kind: str
    detail: dict[str, Any]


class CaptureRunOut(BaseModel):
    since_s: float = Field(description="When the agent's daemon started counting (epoch seconds).")
    batches: int
    last_received_at: datetime
    counts: dict[str, int] = Field(description="The run's last value of each counter.")


class DeviceCaptureOut(BaseModel):
    device_id: str
    latest: dict[str, Any] | None = Field(
        description="The newest batch's capture counters (cumulative since `since_s`), with `received_at`; "
                    "null when the device never sent any.")
    runs: list[CaptureRunOut] = Field(description="One entry per daemon run, oldest first.")
    totals: dict[str, int] = Field(description="Each counter summed over the runs (its total across restarts).")
    uploaded_total: int
    upload_failures_total: int


class LabelsPatch(BaseModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"add_tags": ["canary"], "remove_tags": ["line-3"]}]}
    )
    add_tags: list[str] = Field(default_factory=list, max_length=32)
    remove_tags: list[str] = Field(default_factory=list, max_length=32)
    hardware_class: str | None = Field(None, max_length=64)


class RevokeBody(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"reason": "device stolen"}]})
    reason: str = Field(min_length=1, max_length=256)


@router.get("", response_model=Page[DeviceOut], summary="List devices (filters combine with AND)")
def list_devices(
    db: DbSession,
    page: Pagination,
    who: ViewerPrincipal,
    tag: Annotated[list[str] | None, Query(description="Repeat for several tags: all must match.")] = None,
    hardware_class: str | None = None,
    model: str | None = Query(None, description="Model name the device currently runs."),
    version: str | None = Query(None, description="Model version the device currently runs."),
    status: Annotated[str | None, Query(pattern="^(active|revoked)$")] = None,
    online: bool | None = None,
) -> Page[DeviceOut]:
    query = registry.device_query(
        registry.DeviceFilter(
            tags=tuple(tag or ()),
            hardware_class=hardware_class,
            model=model,
            version=version,
            status=status,
            online=online,
        )
    )
    rows, total = paginate(db, query, page)
    return make_page([DeviceOut.model_validate(d) for d in rows], total, page)


@router.get(
    "/{device_id}", response_model=DeviceDetail, responses=error_responses(404),
    summary="One device with its hardware profile",
)
def get_device(device_id: str, db: DbSession, who: ViewerPrincipal) -> DeviceDetail:
    return DeviceDetail.model_validate(registry.get_device(db, device_id))


@router.get(
    "/{device_id}/capture", response_model=DeviceCaptureOut, responses=error_responses(404),
    summary="The device's sample-capture counters: newest, per daemon run, and totals across restarts",
)
def device_capture_counts(device_id: str, db: DbSession, who: ViewerPrincipal) -> DeviceCaptureOut:
    registry.get_device(db, device_id)
    found = device_capture(db, device_id)
    totals = found.totals
    return DeviceCaptureOut(
        device_id=device_id, latest=found.latest,
        runs=[CaptureRunOut(since_s=r.since_s, batches=r.batches, last_received_at=r.last_received_at,
                            counts=r.counts) for r in found.runs],
        totals=totals, uploaded_total=totals["uploaded"], upload_failures_total=totals["upload_failures"])


@router.get(
    "/{device_id}/history",
    response_model=Page[DeviceEventOut],
    responses=error_responses(404),
    summary="The device's history, newest first",
)
def device_history(
    device_id: str, db: DbSession, page: Pagination, who: ViewerPrincipal
) -> Page[DeviceEventOut]:
    registry.get_device(db, device_id)
    rows, total = paginate(db, registry.history_query(device_id), page)
    return make_page([DeviceEventOut.model_validate(e) for e in rows], total, page)


@router.patch(
    "/{device_id}", response_model=DeviceDetail, responses=error_responses(404), summary="Change tags or hardware class"
)
def patch_device(
    device_id: str, body: Annotated[LabelsPatch, Body()], db: DbSession, who: OperatorPrincipal
) -> DeviceDetail:
    device = registry.update_labels(
        db,
        device_id,
        add_tags=body.add_tags,
        remove_tags=body.remove_tags,
        hardware_class=body.hardware_class,
        by=who.name,
    )
    db.commit()
    db.refresh(device)
    return DeviceDetail.model_validate(device)


@router.post("/{device_id}/revoke", response_model=DeviceDetail, responses=error_responses(404),
             summary="Revoke a device's credentials")
def revoke(
    device_id: str, body: Annotated[RevokeBody, Body()], db: DbSession, who: AdminPrincipal
) -> DeviceDetail:
    device: Device = revoke_device(db, device_id, reason=body.reason, by=who.name)
    db.commit()
    return DeviceDetail.model_validate(device)
