"""Run the inference server on its own event loop in a thread, for a process whose other parts are threads.

The agent's update engine, MQTT client and telemetry are thread-based; the server is asyncio. This
owns the loop thread, starts the HTTP front and hands out the pieces the engine needs:

    server = BackgroundServer(ServerConfig(port=8000)).start()
    activator = ServingActivator(server.bridge, server.models)
    probation = ServerProbation(server.bridge, activator)
    ...
    server.stop()
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from agent.server.activator import LoopBridge
from agent.server.event_loop import new_event_loop
from agent.server.http import InferenceServer, ServerConfig
from agent.server.model_server import ModelServer

T = TypeVar("T")


class BackgroundServer:
    def __init__(self, config: ServerConfig | None = None, event_loop: str = "auto") -> None:
        self.config = config or ServerConfig()
        self._loop = new_event_loop(event_loop)  # uvloop when installed: less CPU per request
        self._thread = threading.Thread(target=self._loop.run_forever, name="inference-server", daemon=True)
        self.bridge = LoopBridge(self._loop)
        self.models: ModelServer | None = None
        self.http: InferenceServer | None = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    @property
    def url(self) -> str:
        if self.http is None:
            raise RuntimeError("server not started")
        return self.http.url

    def call(self, coro: Coroutine[Any, Any, T], timeout_s: float | None = None) -> T:
        return self.bridge.call(coro, timeout_s)

    def stats(self, timeout_s: float = 10.0) -> list[dict[str, Any]]:
        """Per model/version/variant counters and latency histograms (see ModelServer.stats)."""
        if self.models is None:
            return []
        return self.call(self.models.stats(), timeout_s)

    def start(self, timeout_s: float = 30.0) -> BackgroundServer:
        self._thread.start()

        async def start() -> tuple[ModelServer, InferenceServer]:
            models = ModelServer(self.config.batching, drain_timeout_s=self.config.drain_timeout_s)
            http = InferenceServer(models, self.config)
            await http.start()
            return models, http

        try:
            self.models, self.http = self.call(start(), timeout_s)
        except BaseException:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout_s)
            raise
        return self

    def stop(self, timeout_s: float = 60.0) -> None:
        if not self._thread.is_alive():
            return

        async def stop() -> None:
            if self.http is not None:
                await self.http.stop()
            if self.models is not None:
                await self.models.close()

        try:
            self.call(stop(), timeout_s)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout_s)
            self._loop.close()
