"""Offset pagination shared by every list route: `?limit=&offset=` in, `Page[T]` out.

Lists are always ordered by a stable key so that paging through a changing table neither skips nor
repeats rows that were there at the start.
"""

from __future__ import annotations

from typing import Annotated, Generic, TypeVar

from fastapi import Depends, Query
from pydantic import BaseModel
from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

T = TypeVar("T")
MAX_PAGE_SIZE = 500
#: Databases store OFFSET as a signed 64-bit integer; a larger one must be a 422, not a driver error.
MAX_OFFSET = 2**62


class PageParams(BaseModel):
    limit: int
    offset: int


def _page_params(
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE, description="Items per page.")] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET, description="Items to skip.")] = 0,
) -> PageParams:
    return PageParams(limit=limit, offset=offset)


Pagination = Annotated[PageParams, Depends(_page_params)]


class Page(BaseModel, Generic[T]):
    items: list[T]
    total: int
    limit: int
    offset: int
    next_offset: int | None


def paginate(session: Session, query: Select[T], params: PageParams) -> tuple[list[T], int]:
    """Rows of `query` for this page, and the total count of the unpaged query."""
    total = session.scalar(select(func.count()).select_from(query.order_by(None).subquery())) or 0
    rows = list(session.scalars(query.limit(params.limit).offset(params.offset)).unique())
    return rows, total


def make_page(items: list[T], total: int, params: PageParams) -> Page[T]:
    end = params.offset + len(items)
    return Page[T](
        items=items,
        total=total,
        limit=params.limit,
        offset=params.offset,
        next_offset=end if end < total else None,
    )
