"""Image repository routes for the offline release-key workflow (see `controller.registry.offline`)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from controller.api.deps import Context, DbSession
from controller.api.errors import AUTH_ERRORS, ErrorResponse
from controller.auth import AdminPrincipal, OperatorPrincipal

router = APIRouter(prefix="/api/v1/repository", tags=["repository"], responses=AUTH_ERRORS)

MAX_SIGNED_TARGETS_BYTES = 16 * 1024 * 1024


class ImportResult(BaseModel):
    targets_version: int
    published: list[str]


@router.get(
    "/targets/pending",
    summary="Unsigned next targets metadata for the offline release key",
    description="Covers every release in `awaiting_signature`. Sign it where the release key lives "
    "(`edgefleet repository sign`) and send the result to `PUT /api/v1/repository/targets`.",
    responses={404: {"model": ErrorResponse}},
)
def pending_targets(db: DbSession, ctx: Context, who: OperatorPrincipal) -> dict[str, Any]:
    result: dict[str, Any] = ctx.registry.pending_targets(db)
    return result


@router.put(
    "/targets",
    response_model=ImportResult,
    summary="Publish targets metadata signed with the offline release key",
    responses={s: {"model": ErrorResponse} for s in (409, 413, 422)},
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {"type": "object", "description": "TUF targets metadata: {signed, signatures}"}
                }
            },
        }
    },
)
async def import_targets(request: Request, ctx: Context, who: AdminPrincipal) -> ImportResult:

    data = await request.body()

    def run() -> ImportResult:
        with ctx.session_factory() as db:
            version, completed = ctx.registry.import_signed_targets(db, data)
            return ImportResult(
                targets_version=version, published=[f"{r.name} {r.version}" for r in completed]
            )

    return await run_in_threadpool(run)
