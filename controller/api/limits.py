"""Request body size limits, enforced before a route reads the body.

FastAPI reads JSON and multipart bodies whole; without a limit one request can fill the controller's
memory or disk. The declared Content-Length is checked first; chunked bodies are counted as they
stream and cut off at the limit. Paths under `large_routes` (model uploads, artifact PUTs) get their
own, larger limit; the routes themselves check the exact per-file limits.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class _TooLarge(Exception):
    pass


class BodySizeLimit:
    def __init__(self, app: ASGIApp, *, default_max_bytes: int, large_routes: Mapping[str, int]) -> None:
        self.app = app
        self.default_max_bytes = default_max_bytes
        self.large_routes = dict(large_routes)

    def limit_for(self, path: str) -> int:
        for prefix, max_bytes in self.large_routes.items():
            if path == prefix or path.startswith(prefix.rstrip("/") + "/"):
                return max_bytes
        return self.default_max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        max_bytes = self.limit_for(scope.get("path", ""))
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_bytes:
            await self._refuse(send, max_bytes)
            return
        received = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > max_bytes:
                    raise _TooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except _TooLarge:
            if not started:
                await self._refuse(send, max_bytes)

    @staticmethod
    async def _refuse(send: Send, max_bytes: int) -> None:
        body = json.dumps(
            {
                "error": {
                    "code": "too_large",
                    "message": f"request body is over the limit of {max_bytes} bytes",
                    "details": {"max_bytes": max_bytes},
                }
            }
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
