"""The Open Inference Protocol over HTTP (aiohttp): routes, limits, protocol-shaped errors.

| route                                                   | answer                                   |
|---------------------------------------------------------|------------------------------------------|
| GET  /v2/health/live                                    | 200 while the process serves             |
| GET  /v2/health/ready                                   | 200 when every model has a version, 503  |
| GET  /v2                                                | server metadata                          |
| GET  /v2/models/{name}[/versions/{version}]             | model metadata (names, datatypes, shapes)|
| GET  /v2/models/{name}[/versions/{version}]/ready       | 200 ready / 503 not ready / 404 unknown  |
| POST /v2/models/{name}[/versions/{version}]/infer       | inference (JSON or binary tensors)       |
| GET  /edgefleet/models/{name}/stats                     | per-version counters + latency histogram |

Every error is `{"error": "..."}` with the status from agent.server.errors; 429 and 503 carry
`Retry-After`. Limits: `max_body_bytes` (413 before the body is read when Content-Length says so),
`max_concurrent_requests` in the server (429), the per-model queue (429), and aiohttp's header limits
(400 for oversized request lines or headers). The default bind is 127.0.0.1: applications on the
device call it; nothing off the device should.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from aiohttp import web

from agent.server.batching import BatchingConfig, default_workers
from agent.server.errors import (
    OverloadedError,
    PayloadTooLargeError,
    RequestError,
    ServerError,
    UnavailableError,
)
from agent.server.model_server import ModelServer
from agent.server.protocol import (
    HEADER_LENGTH,
    decode_infer_request,
    encode_infer_response,
    error_body,
    tensor_metadata,
)

log = logging.getLogger(__name__)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int | None = 8000  # None: no TCP listener (Unix socket only); 0: any free port
    unix_socket: Path | None = None
    max_body_bytes: int = 64 * 1024 * 1024
    max_concurrent_requests: int = 512
    drain_timeout_s: float = 30.0
    batching: BatchingConfig = field(default_factory=lambda: BatchingConfig(workers=default_workers()))

    def __post_init__(self) -> None:
        if self.port is None and self.unix_socket is None:
            raise ValueError("give a TCP port, a Unix socket, or both")
        if self.port is not None and not 0 <= self.port <= 65535:
            raise ValueError(f"port must be within 0..65535, got {self.port}")
        if self.max_body_bytes < 1024 or self.max_concurrent_requests < 1:
            raise ValueError("max_body_bytes must be >= 1024 and max_concurrent_requests >= 1")


def _json(status: int, doc: Any) -> web.Response:
    return web.json_response(doc, status=status)


def _error(status: int, message: str, retry_after_s: float | None = None) -> web.Response:
    response = web.Response(status=status, body=error_body(message), content_type="application/json")
    if retry_after_s is not None:
        response.headers["Retry-After"] = str(max(1, math.ceil(retry_after_s)))
    return response


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ServerError as e:
        retry = e.retry_after_s if isinstance(e, OverloadedError) else (1.0 if e.status == 503 else None)
        return _error(e.status, str(e), retry)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        return _error(e.status, e.text or e.reason)
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return _error(500, "internal server error")


def _server_version() -> str:
    try:
        return metadata.version("edgefleet")
    except metadata.PackageNotFoundError:
        return "0"


class InferenceServer:
    """The HTTP shell around a ModelServer; `start` binds, `stop` drains and closes."""

    def __init__(self, models: ModelServer, config: ServerConfig | None = None) -> None:
        self.models = models
        self.config = config or ServerConfig()
        self._in_flight = 0
        self._runner: web.AppRunner | None = None
        self.port: int | None = None
        self.app = web.Application(middlewares=[_errors], client_max_size=self.config.max_body_bytes)
        # infer first: the router tries resources in order, and infer is the hot path
        routes = [web.post("/v2/models/{name}/infer", self.infer),
                  web.post("/v2/models/{name}/versions/{version}/infer", self.infer)]
        for prefix in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
            routes += [web.get(prefix, self.model_metadata), web.get(prefix + "/ready", self.model_ready)]
        routes += [
            web.get("/v2/health/live", self.live),
            web.get("/v2/health/ready", self.ready),
            web.get("/v2", self.server_metadata),
            web.get("/edgefleet/models/{name}/stats", self.stats),
        ]
        self.app.add_routes(routes)

    @property
    def url(self) -> str:
        return f"http://{self.config.host}:{self.port}"

    async def start(self) -> None:
        # lingering_time: after refusing a body, read and discard what the client still sends for at
        # most this long (keeps the connection usable) instead of aiohttp's 10 s.
        # handler_cancellation: a client that disconnects cancels its handler, which takes its request
        # out of the batching queue before it reaches the runtime (batching.py).
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False, lingering_time=1.0,
                                     handler_cancellation=True)
        await self._runner.setup()
        if self.config.unix_socket is not None:
            path = self.config.unix_socket
            if path.is_socket():
                path.unlink()
            await web.UnixSite(self._runner, str(path)).start()
            os.chmod(path, 0o660)  # local applications of the same group, not everyone
        if self.config.port is not None:
            family = socket.AF_INET6 if ":" in self.config.host else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.config.host, self.config.port))
            self.port = sock.getsockname()[1]
            await web.SockSite(self._runner, sock).start()
        log.info("serving the Open Inference Protocol on %s", self.config.unix_socket or self.url)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def live(self, request: web.Request) -> web.Response:
        return _json(200, {"live": True})

    async def ready(self, request: web.Request) -> web.Response:
        models = self.models.models
        ok = bool(models) and all(m.ready for m in models.values())
        return _json(200 if ok else 503, {"ready": ok})

    async def server_metadata(self, request: web.Request) -> web.Response:
        return _json(200, {"name": "edgefleet-agent", "version": _server_version(),
                           "extensions": ["binary_tensor_data"]})

    async def model_metadata(self, request: web.Request) -> web.Response:
        model = self.models.model(request.match_info["name"])
        target = model.version(request.match_info.get("version"))
        versions = [v.version for v in (model.current, model.previous) if v is not None]
        return _json(200, {
            "name": model.name,
            "versions": versions,
            "platform": getattr(target.session, "platform", "unknown"),
            "inputs": tensor_metadata(target.inputs),
            "outputs": tensor_metadata(target.outputs),
            "parameters": {"version": target.version, "variant": target.variant,
                           "max_batch_size": self.models.batching.max_batch_size if target.batched else 0},
        })

    async def model_ready(self, request: web.Request) -> web.Response:
        model = self.models.model(request.match_info["name"])
        try:
            model.version(request.match_info.get("version"))
        except UnavailableError:
            return _json(503, {"name": model.name, "ready": False})
        return _json(200, {"name": model.name, "ready": True})

    async def stats(self, request: web.Request) -> web.Response:
        model = self.models.model(request.match_info["name"])
        doc = model.describe()
        for key in ("current", "previous"):
            version = getattr(model, key)
            if version is not None:
                doc[key]["stats"] = version.stats.snapshot()
        return _json(200, doc)

    async def infer(self, request: web.Request) -> web.Response:
        started_s = time.perf_counter()
        if self._in_flight >= self.config.max_concurrent_requests:
            raise OverloadedError(f"server busy: {self._in_flight} requests in flight")
        self._in_flight += 1
        try:
            name = request.match_info["name"]
            version = request.match_info.get("version")
            target = self.models.model(name).version(version)
            length = request.content_length
            if length is not None and length > self.config.max_body_bytes:
                raise PayloadTooLargeError(f"body of {length} bytes exceeds the limit of "
                                           f"{self.config.max_body_bytes}")
            body = await request.read()
            raw_header = request.headers.get(HEADER_LENGTH)
            header_length: int | None = None
            if raw_header is not None:
                if not raw_header.isdigit() or len(raw_header) > 12:
                    raise RequestError(f"{HEADER_LENGTH} must be a decimal byte count, got {raw_header[:40]!r}")
                header_length = int(raw_header)
            decoded = decode_infer_request(body, header_length, target.inputs, target.outputs, target.batched)
            outputs, used = await self.models.infer(name, version, decoded)
            payload, json_length = encode_infer_response(
                name, used.version, decoded, outputs, {"variant": used.variant} if used.variant else None
            )
            if json_length is None:
                response = web.Response(body=payload, content_type="application/json")
            else:
                response = web.Response(body=payload, content_type="application/octet-stream",
                                        headers={HEADER_LENGTH: str(json_length)})
            self.models.record(used, time.perf_counter() - started_s)
            return response
        finally:
            self._in_flight -= 1

