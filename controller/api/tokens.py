"""Operator API tokens: admins create, list and revoke them (`/api/v1/tokens`)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Body, status
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from controller.api.deps import DbSession, RowId
from controller.api.errors import AUTH_ERRORS, error_responses
from controller.api.pagination import Page, Pagination, make_page, paginate
from controller.auth import AdminPrincipal, Role, create_api_token, revoke_api_token
from controller.db.models import ApiToken

#: Ten years; longer lifetimes are refused rather than overflowing the date arithmetic.
MAX_TOKEN_LIFETIME_S = 10 * 365 * 86400

router = APIRouter(prefix="/api/v1/tokens", tags=["tokens"], responses=AUTH_ERRORS)


class TokenCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"name": "ci-uploader", "role": "operator"}]}
    )
    name: str = Field(min_length=1, max_length=128)
    role: Role
    # Bounded so that "now + expires_in_s" stays a representable date.
    expires_in_s: float | None = Field(None, gt=0, le=MAX_TOKEN_LIFETIME_S)


class TokenOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    name: str
    role: str
    prefix: str
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None
    revoked_at: datetime | None


class TokenCreated(TokenOut):
    token: str = Field(description="The secret; shown only in this answer.")


@router.post("", response_model=TokenCreated, status_code=status.HTTP_201_CREATED, summary="Create a token")
def create_token(body: Annotated[TokenCreate, Body()], db: DbSession, who: AdminPrincipal) -> TokenCreated:
    row, secret = create_api_token(db, name=body.name, role=body.role, expires_in_s=body.expires_in_s)
    db.commit()
    return TokenCreated(**TokenOut.model_validate(row).model_dump(), token=secret)


@router.get("", response_model=Page[TokenOut], summary="List tokens (never their secrets)")
def list_tokens(db: DbSession, page: Pagination, who: AdminPrincipal) -> Page[TokenOut]:
    rows, total = paginate(db, select(ApiToken).order_by(ApiToken.id), page)
    return make_page([TokenOut.model_validate(r) for r in rows], total, page)


@router.delete("/{token_id}", response_model=TokenOut, responses=error_responses(404), summary="Revoke a token")
def revoke_token(token_id: RowId, db: DbSession, who: AdminPrincipal) -> TokenOut:
    row = revoke_api_token(db, token_id)
    db.commit()
    return TokenOut.model_validate(row)
