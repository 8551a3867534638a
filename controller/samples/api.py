"""Sample routes: devices ask for upload URLs and report completion; operators list samples.

| route                                        | who             | does                                      |
|----------------------------------------------|-----------------|-------------------------------------------|
| POST /api/v1/device/samples/uploads          | device          | record metadata, fresh presigned PUT URLs |
| POST /api/v1/device/samples/complete         | device          | verify stored objects, mark `uploaded`    |
| GET  /api/v1/samples?model=&since=&status=   | viewer          | sample metadata, paged                    |

Device routes take the device credential (`controller.security.device_auth.RequireDevice`), never an
operator token; a device acts only on its own samples because its id comes from the credential.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Query
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from controller.api.deps import Context, DbSession
from controller.api.errors import AUTH_ERRORS
from controller.api.pagination import Pagination, make_page, paginate
from controller.auth import ViewerPrincipal
from controller.samples import service
from controller.samples.tables import SampleRow
from controller.security.device_auth import DeviceIdentity, RequireDevice

router = APIRouter(tags=["samples"], responses=AUTH_ERRORS)
Device = Annotated[DeviceIdentity, Depends(RequireDevice())]


class SampleIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sample_id: str = Field(min_length=8, max_length=64)
    model: str = Field(min_length=1, max_length=128)
    version: str = Field(min_length=1, max_length=128)
    variant: str = Field(min_length=1, max_length=128)
    reason: str = Field(max_length=32)
    confidence: float | None = Field(None, ge=0.0, le=1.0)
    captured_at_s: float = Field(ge=0)
    size_bytes: int = Field(gt=0)
    sha256: str = Field(min_length=64, max_length=64)


class UploadsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    samples: list[SampleIn] = Field(min_length=1, max_length=64)


class CompleteRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sample_ids: list[str] = Field(min_length=1, max_length=64)


@router.post("/api/v1/device/samples/uploads", summary="Presigned PUT URLs for captured samples (device)")
async def request_uploads(body: Annotated[UploadsRequest, Body()], db: DbSession, ctx: Context,
                          who: Device) -> dict[str, Any]:
    metas = [service.SampleMeta(**s.model_dump()) for s in body.samples]
    ttl_s = int(ctx.extras.get("sample_url_ttl_s", service.DEFAULT_URL_TTL_S))
    uploads = await run_in_threadpool(service.request_uploads, db, ctx.store, who.device_id, metas, ttl_s)
    return {"uploads": uploads}


@router.post("/api/v1/device/samples/complete", summary="Confirm uploaded samples (device)")
async def complete_uploads(body: Annotated[CompleteRequest, Body()], db: DbSession, ctx: Context,
                           who: Device) -> dict[str, list[str]]:
    return await run_in_threadpool(service.complete_uploads, db, ctx.store, who.device_id, body.sample_ids)


@router.get("/api/v1/samples", summary="Captured samples' metadata")
def list_samples(
    db: DbSession, page: Pagination, who: ViewerPrincipal, model: Annotated[str | None, Query(max_length=128)] = None,
    since: datetime | None = None, status: Annotated[str | None, Query(pattern="^(pending|uploaded)$")] = "uploaded",
) -> dict[str, Any]:
    query = select(SampleRow).order_by(SampleRow.captured_at, SampleRow.id)
    if model is not None:
        query = query.where(SampleRow.model == model)
    if since is not None:
        query = query.where(SampleRow.captured_at >= since)
    if status is not None:
        query = query.where(SampleRow.status == status)
    rows, total = paginate(db, query, page)
    return make_page([service.row_dict(r) for r in rows], total, page).model_dump()
