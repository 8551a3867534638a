"""Operator API tokens and roles.

Tokens are 256-bit random strings shown once at creation; the database keeps only their SHA-256.
A slow password hash would add nothing here: the secret has full entropy, so the digest cannot be
brute-forced, and a fast lookup by digest keeps every request cheap.

Roles are ordered: viewer (read) < operator (upload models, run rollouts, tag devices) < admin
(tokens, enrollment, revocation). A route declares the least role it needs with one of the
`Annotated` aliases below; `tests/controller/test_route_auth.py` walks the route table and checks that
every route has exactly one such requirement and enforces it.
"""

from __future__ import annotations

import enum
import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated

from fastapi import Depends
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import select
from sqlalchemy.orm import Session

from controller.api.deps import DbSession
from controller.db.base import utcnow
from controller.db.models import ApiToken
from controller.errors import Forbidden, InvalidInput, NotFound, Unauthenticated

OPERATOR_TOKEN_PREFIX = "efo_"
_LAST_USED_RESOLUTION = timedelta(minutes=1)


class Role(str, enum.Enum):
    VIEWER = "viewer"
    OPERATOR = "operator"
    ADMIN = "admin"

    @property
    def rank(self) -> int:
        return _RANKS[self]

    def allows(self, needed: Role) -> bool:
        return self.rank >= needed.rank


_RANKS = {Role.VIEWER: 0, Role.OPERATOR: 1, Role.ADMIN: 2}


@dataclass(frozen=True)
class Principal:
    """Who is calling: the token's id and name, and its role."""

    token_id: int
    name: str
    role: Role


def generate_secret(prefix: str) -> str:
    return prefix + secrets.token_urlsafe(32)


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def create_api_token(
    session: Session, *, name: str, role: Role | str, expires_in_s: float | None = None
) -> tuple[ApiToken, str]:
    """Create a token; returns the row and the plaintext, which is never stored and shown only now."""
    try:
        role = Role(role)
    except ValueError as e:
        raise InvalidInput(f"role must be one of viewer, operator, admin; got {role!r}") from e
    name = name.strip()
    if not name or len(name) > 128:
        raise InvalidInput("token name must be 1-128 characters")
    secret = generate_secret(OPERATOR_TOKEN_PREFIX)
    row = ApiToken(
        name=name,
        role=role.value,
        token_hash=hash_secret(secret),
        prefix=secret[: len(OPERATOR_TOKEN_PREFIX) + 6],
        created_at=utcnow(),
        expires_at=utcnow() + timedelta(seconds=expires_in_s) if expires_in_s else None,
    )
    session.add(row)
    session.flush()
    return row, secret


def revoke_api_token(session: Session, token_id: int) -> ApiToken:
    row = session.get(ApiToken, token_id)
    if row is None:
        raise NotFound(f"API token {token_id} does not exist")
    if row.revoked_at is None:
        row.revoked_at = utcnow()
    return row


def authenticate(session: Session, secret: str, *, now: datetime | None = None) -> Principal:
    """The principal behind `secret`, or Unauthenticated (unknown, revoked and expired look alike)."""
    now = now or utcnow()
    row = session.scalar(select(ApiToken).where(ApiToken.token_hash == hash_secret(secret)))
    if row is None or row.revoked_at is not None or (row.expires_at is not None and row.expires_at <= now):
        raise Unauthenticated("the API token is unknown, revoked or expired")
    if row.last_used_at is None or now - row.last_used_at > _LAST_USED_RESOLUTION:
        row.last_used_at = now
        session.commit()
    return Principal(token_id=row.id, name=row.name, role=Role(row.role))


_bearer = HTTPBearer(auto_error=False, description="An operator API token: `Authorization: Bearer efo_…`")


class RequireRole:
    """Dependency: a valid operator token whose role is at least `role`."""

    def __init__(self, role: Role) -> None:
        self.role = role

    def __call__(
        self,
        db: DbSession,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> Principal:
        if credentials is None or credentials.scheme.lower() != "bearer" or not credentials.credentials:
            raise Unauthenticated("this route needs an operator token: Authorization: Bearer <token>")
        principal = authenticate(db, credentials.credentials)
        if not principal.role.allows(self.role):
            raise Forbidden(
                f"this route needs the {self.role.value} role; token {principal.name!r} has {principal.role.value}"
            )
        return principal

    def __repr__(self) -> str:
        return f"RequireRole({self.role.value})"


ViewerPrincipal = Annotated[Principal, Depends(RequireRole(Role.VIEWER))]
OperatorPrincipal = Annotated[Principal, Depends(RequireRole(Role.OPERATOR))]
AdminPrincipal = Annotated[Principal, Depends(RequireRole(Role.ADMIN))]
