"""The audit trail of operator actions: one JSON line per state-changing API request.

Every POST/PUT/PATCH/DELETE that reaches the controller's API or dashboard is written to the
`edgefleet.audit` logger after it is answered: when, who, what, and how it ended. Refused attempts are
recorded too (a 401/403 burst is exactly what an auditor looks for). Reads are not audited: they change
nothing and would drown the trail.

Who: the operator token's public prefix (`efo_AbC123`, the identifier `edgefleet tokens list` shows;
six characters of a 43-character secret authenticate nothing), `device:<id>` for device credentials,
`session` for the dashboard's cookie, `anonymous` otherwise. The path is logged without its query
string, and request bodies never are, so no secret or presigned signature reaches the trail.

Route the logger where audits belong (journald with its own identifier, a file shipped off the host);
`install_audit_file(path)` appends to a 0600 file for a single-host controller.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import time
from datetime import datetime, timezone
from pathlib import Path

from starlette.types import ASGIApp, Message, Receive, Scope, Send

AUDIT_LOGGER = "edgefleet.audit"
AUDITED_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
#: Device uploads through presigned URLs are data, not operator actions.
UNAUDITED_PREFIXES = ("/artifacts/",)
_TOKEN_PREFIX_CHARS = 10  # "efo_" + 6, as stored in the token table's `prefix` column

logger = logging.getLogger(AUDIT_LOGGER)


def actor_of(headers: dict[bytes, bytes]) -> str:
    authorization = headers.get(b"authorization", b"").decode("latin-1").strip()
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() == "bearer" and value:
        return value.strip()[:_TOKEN_PREFIX_CHARS] if value.startswith("efo_") else "bearer:unrecognised"
    if scheme.lower() == "basic" and value:
        try:
            user = base64.b64decode(value.strip(), validate=True).decode("utf-8").partition(":")[0]
        except (binascii.Error, UnicodeDecodeError):
            return "basic:malformed"
        return f"device:{user[:64]}"
    if b"x-client-certificate" in headers:
        return "device:certificate"
    if b"cookie" in headers:
        return "session"
    return "anonymous"


class AuditMiddleware:
    """ASGI middleware writing one audit record per state-changing request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope.get("method") not in AUDITED_METHODS
            or str(scope.get("path", "")).startswith(UNAUDITED_PREFIXES)
        ):
            await self.app(scope, receive, send)
            return
        started_s = time.monotonic()
        status = {"code": 500}

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            headers = {k.lower(): v for k, v in scope.get("headers") or []}
            client = scope.get("client")
            record = {
                "at": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
                "actor": actor_of(headers),
                "method": scope.get("method"),
                "path": scope.get("path"),
                "status": status["code"],
                "client": client[0] if client else None,
                "duration_ms": round((time.monotonic() - started_s) * 1000, 1),
            }
            logger.info(json.dumps(record, sort_keys=True))


def install_audit_file(path: Path) -> logging.Handler:
    """Append audit records to `path` (created 0600), one JSON object per line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.close(fd)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    return handler
