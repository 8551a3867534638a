"""`/healthz`: liveness plus a database round trip; public, so load balancers need no token."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel
from sqlalchemy import text

from controller.api.deps import Context
from controller.db.migrate import current_revision, head_revision
from controller.errors import Unavailable

router = APIRouter(tags=["health"])


class Health(BaseModel):
    status: str
    database: str
    schema_revision: str | None


@router.get("/healthz", response_model=Health, summary="Liveness and database check")
def healthz(ctx: Context) -> Health:
    try:
        with ctx.engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        revision = current_revision(ctx.engine)
    except Exception as e:  # any driver error means "not healthy", whatever its class
        raise Unavailable(f"database unreachable: {type(e).__name__}") from e
    if revision != head_revision():
        raise Unavailable(f"database schema at {revision}, expected {head_revision()}: run migrations")
    return Health(status="ok", database=ctx.engine.dialect.name, schema_revision=revision)
