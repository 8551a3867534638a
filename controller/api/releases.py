"""Model registry routes (`/api/v1/models`): upload a release, watch its build, read its variants,
block known-bad releases with a signed release floor (`controller.registry.floors`)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, UploadFile, status
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from controller.api.deps import Context, DbSession
from controller.api.errors import AUTH_ERRORS, ErrorResponse, error_responses
from controller.api.pagination import Page, Pagination, make_page, paginate
from controller.auth import AdminPrincipal, OperatorPrincipal, ViewerPrincipal
from controller.db.models import ModelRelease
from controller.registry.floors import block_releases
from controller.registry.service import ReleaseMeta

router = APIRouter(prefix="/api/v1/models", tags=["models"], responses=AUTH_ERRORS)


class VariantOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    variant_id: str
    runtime: str
    precision: str
    status: str
    offered: bool
    target_path: str
    sha256: str
    length: int
    accuracy: float | None
    agreement: float | None
    latency_ms: float | None
    note: str
    figures: dict[str, Any]


class ReleaseOut(BaseModel):
    model_config = ConfigDict(
        from_attributes=True,
        json_schema_extra={
            "examples": [
                {
                    "name": "digits-mlp",
                    "version": "1.0.0",
                    "task": "classification",
                    "preprocessing": "x / 16",
                    "release_counter": 1,
                    "min_accuracy": 0.9,
                    "status": "building",
                    "progress": 0.4,
                    "progress_message": "openvino-fp16: evaluating",
                    "error": None,
                    "model_sha256": "ab…",
                    "model_bytes": 41230,
                    "created_by": "ci-uploader",
                    "created_at": "2026-11-24T21:00:00Z",
                    "updated_at": "2026-11-24T21:00:05Z",
                }
            ]
        },
    )
    name: str
    version: str
    task: str
    preprocessing: str
    release_counter: int
    min_accuracy: float | None
    status: str
    progress: float
    progress_message: str
    error: str | None
    model_sha256: str
    model_bytes: int
    created_by: str
    created_at: datetime
    updated_at: datetime


class ReleaseDetail(ReleaseOut):
    report: dict[str, Any]
    variants: list[VariantOut]


@router.post(
    "",
    response_model=ReleaseOut,
    status_code=status.HTTP_202_ACCEPTED,
    summary="Register a release and start its variant build",
    description="Multipart form: `model` (ONNX file), `golden` (npz with `inputs`, `labels` and/or "
    "`reference_outputs`), `name`, `version`, optional `task`, `preprocessing`, `min_accuracy`. "
    "Answers 202 at once; poll `GET /api/v1/models/{name}/{version}` for progress.",
    responses={s: {"model": ErrorResponse} for s in (409, 413, 422, 503)},
)
def upload_model(
    ctx: Context,
    who: OperatorPrincipal,
    model: Annotated[UploadFile, File(description="The ONNX model.")],
    golden: Annotated[UploadFile, File(description="Golden set (.npz).")],
    name: Annotated[str, Form(examples=["digits-mlp"])],
    version: Annotated[str, Form(examples=["1.0.0"])],
    task: Annotated[str, Form()] = "classification",
    preprocessing: Annotated[str, Form(description="Input preprocessing notes for integrators.")] = "",
    min_accuracy: Annotated[
        float | None, Form(ge=0.0, le=1.0, description="Accuracy floor of variants.")
    ] = None,
) -> JSONResponse:
    release = ctx.registry.register(
        ReleaseMeta(
            name=name, version=version, task=task, preprocessing=preprocessing, min_accuracy=min_accuracy
        ),
        model=model.file,
        golden=golden.file,
        created_by=who.name,
    )
    body = ReleaseOut.model_validate(release).model_dump(mode="json")
    return JSONResponse(body, status_code=202, headers={"Location": f"/api/v1/models/{name}/{version}"})


@router.get("", response_model=Page[ReleaseOut], summary="List releases, newest first")
def list_models(
    db: DbSession, page: Pagination, who: ViewerPrincipal, name: str | None = None, status: str | None = None
) -> Page[ReleaseOut]:
    query = select(ModelRelease)
    if name is not None:
        query = query.where(ModelRelease.name == name)
    if status is not None:
        query = query.where(ModelRelease.status == status)
    rows, total = paginate(db, query.order_by(ModelRelease.id.desc()), page)
    return make_page([ReleaseOut.model_validate(r) for r in rows], total, page)


@router.get(
    "/{name}/{version}",
    response_model=ReleaseDetail,
    responses=error_responses(404),
    summary="A release: build progress and variants",
)
def get_model(name: str, version: str, db: DbSession, ctx: Context, who: ViewerPrincipal) -> ReleaseDetail:
    return ReleaseDetail.model_validate(ctx.registry.get(db, name, version))


@router.delete(
    "/{name}/{version}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=error_responses(404, 409),
    summary="Delete a release that was never published (failed or queued)",
)
def delete_model(name: str, version: str, db: DbSession, ctx: Context, who: OperatorPrincipal) -> None:
    ctx.registry.delete(db, name, version)


class ReleaseFloorIn(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"below": 4}]})
    below: int = Field(ge=1, le=2**31 - 1, strict=True, description="Block every release whose counter is lower.")


class ReleaseFloorOut(BaseModel):
    model: str
    release_floor: int
    previous_floor: int
    targets_version: int | None
    blocked_versions: list[str]
    devices_on_blocked: list[str]


@router.put(
    "/{name}/release-floor",
    response_model=ReleaseFloorOut,
    summary="Block every release of a model below a release counter, on every device",
    description="Signs `below` as the model's release floor into the targets metadata with the release "
    "key: devices refuse any assignment of a lower counter from their next verification on. Floors are "
    "never lowered. 409 when the release key is offline (the floor must be signed where that key is) or "
    "the floor would go down; 422 for a floor past the next release's counter. Devices already running "
    "a blocked release keep it until assigned another; the answer lists them.",
    responses={s: {"model": ErrorResponse} for s in (404, 409, 422, 503)},
)
def set_release_floor(name: str, body: ReleaseFloorIn, db: DbSession, ctx: Context,
                      who: AdminPrincipal) -> ReleaseFloorOut:
    change = block_releases(db, ctx.registry.publisher, name, body.below)
    return ReleaseFloorOut(**vars(change))
