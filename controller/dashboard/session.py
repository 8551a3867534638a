"""Dashboard sign-in: an operator token exchanged once for an HttpOnly, SameSite=Strict cookie.

The dashboard uses the same operator tokens and roles as the REST API (`controller.auth`): the sign-in
form checks the token with `authenticate`, and every page checks the cookie the same way, so a revoked
or expired token locks the browser out on its next click. The cookie holds the token itself (the
database keeps only its digest) and is never readable by scripts.

State-changing requests (rollout buttons) are POSTs that must carry a CSRF field derived from the
session token with a per-controller key; together with SameSite=Strict, a page on another origin cannot
make a signed-in browser pause or roll back a rollout.

Not here: user accounts, passwords or SSO; a fleet that wants them puts an authenticating proxy in front
and hands out viewer tokens.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from fastapi import Request

from controller.auth import Principal, Role, authenticate
from controller.errors import Unauthenticated

COOKIE_NAME = "edgefleet_session"
COOKIE_MAX_AGE_S = 12 * 3600
MAX_TOKEN_CHARS = 256


class LoginRequired(Exception):
    """No valid session: the page answers with a redirect to the sign-in form."""


class NotAllowed(Exception):
    """Signed in, but the token's role is too weak for this action."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class Viewer:
    principal: Principal
    csrf: str

    @property
    def can_operate(self) -> bool:
        return self.principal.role.allows(Role.OPERATOR)


def csrf_for(token: str, key: bytes) -> str:
    return hmac.new(key, b"dashboard-csrf:" + token.encode(), hashlib.sha256).hexdigest()[:40]


def _key(request: Request) -> bytes:
    key: bytes = request.app.state.csrf_key
    return key


def check_token(request: Request, token: str) -> Principal:
    """The principal behind a token typed into the sign-in form (Unauthenticated if none)."""
    token = token.strip()
    if not token or len(token) > MAX_TOKEN_CHARS:
        raise Unauthenticated("paste an operator token (efo_…)")
    with request.app.state.ctx.session_factory() as session:
        return authenticate(session, token)


def current_viewer(request: Request) -> Viewer:
    """Dependency of every page: the signed-in principal, else LoginRequired."""
    token = request.cookies.get(COOKIE_NAME, "")
    if not token or len(token) > MAX_TOKEN_CHARS:
        raise LoginRequired()
    try:
        with request.app.state.ctx.session_factory() as session:
            principal = authenticate(session, token)
    except Unauthenticated as e:
        raise LoginRequired() from e
    return Viewer(principal, csrf_for(token, _key(request)))


def require_operator(request: Request, viewer: Viewer, csrf: str) -> None:
    """For POSTs: operator role and a matching CSRF field."""
    if not hmac.compare_digest(csrf.encode(), viewer.csrf.encode()):
        raise NotAllowed("the form is stale or came from another site; reload the page and try again")
    if not viewer.can_operate:
        raise NotAllowed(
            f"this action needs the operator role; token {viewer.principal.name!r} has "
            f"{viewer.principal.role.value}"
        )
