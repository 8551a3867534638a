"""FastAPI dependencies with `Annotated` aliases, so route signatures stay short.

    def list_devices(db: DbSession, ctx: Context, who: ViewerPrincipal) -> ...

Role aliases live in `controller.auth` (ViewerPrincipal, OperatorPrincipal, AdminPrincipal).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Path, Request
from sqlalchemy.orm import Session

from controller.api.context import ControllerContext


def get_context(request: Request) -> ControllerContext:
    ctx: ControllerContext = request.app.state.ctx
    return ctx


def get_db(request: Request) -> Iterator[Session]:
    """One session per request; routes commit what they change, anything else is rolled back."""
    ctx = get_context(request)
    with ctx.session_factory() as session:
        yield session


Context = Annotated[ControllerContext, Depends(get_context)]
DbSession = Annotated[Session, Depends(get_db)]
#: A database row id in a path: positive and within the id columns' INTEGER (32 bits on PostgreSQL), so
#: that a huge number is a 422 rather than an overflow inside the database or its driver.
RowId = Annotated[int, Path(ge=1, le=2**31 - 1)]
