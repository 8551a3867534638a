"""The engine's Activator and Probation ports over an inference server that starts on first use.

Why lazy: the server stack (aiohttp, numpy, a runtime) costs tens of megabytes, and a device that
serves no model yet should stay small (a Raspberry Pi runs other things). The first `restore` or
`activate` starts the `BackgroundServer`, and from then on the calls go to the server's own
`ServingActivator` and `ServerProbation`. Until then the local endpoint is closed: there is nothing
to serve.

`served` is the slot being served, so the daemon can reconcile it with the `current` pointer after
an update or a crash. The server runs on its own event loop thread (`_ServerThread`); `configure_app`
may mount extra routes (Prometheus `/metrics`) on the aiohttp application before it starts;
`on_serving(models, loop, name)` hears which model name serves after each restore, activation and
rollback (sample capture attaches its batch observer there), and `on_shadow_compared` sees each
sample the probation shadow replayed on the previous version.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.slots import ModelRef

if TYPE_CHECKING:  # types only: agent.state.ports pulls in the stager and python-tuf
    from agent.server.activator import ServingActivator
    from agent.server.http import InferenceServer
    from agent.server.model_server import ModelServer
    from agent.server.probation import ServerProbation
    from agent.state.ports import ActiveModel, ProbationResult
    from manifests.assignment import ProbationPolicy

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServingSettings:
    host: str = "127.0.0.1"
    port: int = 8000
    unix_socket: Path | None = None
    serve_as: str | None = None
    threads: int | None = None
    workers: int | None = None
    max_batch_size: int = 32
    max_queue_delay_ms: float = 0.0
    probation_poll_interval_s: float = 1.0


class _ServerThread:
    """The inference server on its own event loop thread; the rest of the agent is threads."""

    def __init__(self, models: ModelServer, http: InferenceServer) -> None:
        self.models = models
        self.http = http
        from agent.server.event_loop import new_event_loop

        self.loop = new_event_loop()  # uvloop where installed
        self._thread = threading.Thread(target=self.loop.run_forever, name="inference-server", daemon=True)

    def start(self, timeout_s: float = 30.0) -> None:
        self._thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self.http.start(), self.loop).result(timeout_s)
        except BaseException:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout_s)
            raise

    def stop(self, timeout_s: float) -> None:
        async def stop() -> None:
            await self.http.stop()  # stops listening, lets in-flight requests finish
            await self.models.close()

        try:
            asyncio.run_coroutine_threadsafe(stop(), self.loop).result(timeout_s)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout_s)


class LazyServing:
    """Activator + Probation; thread-safe start. `on_started(url)` is called once the server listens."""

    def __init__(self, settings: ServingSettings, on_started: Callable[[str], None] | None = None,
                 configure_app: Callable[[Any, Any, asyncio.AbstractEventLoop], None] | None = None,
                 on_serving: Callable[[Any, asyncio.AbstractEventLoop, str], None] | None = None,
                 on_shadow_compared: Callable[[Any, Any, Any, Any], None] | None = None) -> None:
        self.settings = settings
        self.on_started = on_started
        self.configure_app = configure_app  # (aiohttp app, ModelServer, loop), before the server starts
        self.on_serving = on_serving
        self.on_shadow_compared = on_shadow_compared
        self.served: ModelRef | None = None
        self._lock = threading.Lock()
        self._closed = False
        self._server: _ServerThread | None = None
        self._activator: ServingActivator | None = None
        self._probation: ServerProbation | None = None

    @property
    def started(self) -> bool:
        return self._server is not None

    @property
    def models(self) -> ModelServer | None:
        return self._server.models if self._server is not None else None

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        return self._server.loop if self._server is not None else None

    @property
    def url(self) -> str | None:
        server = self._server
        return server.http.url if server is not None and server.http.port is not None else None

    def _ensure(self) -> tuple[ServingActivator, ServerProbation]:
        with self._lock:
            if self._closed:
                raise RuntimeError("the inference server is shutting down")
            if self._activator is None or self._probation is None:
                from agent.runtime import RuntimeOptions, default_intra_op_threads
                from agent.server.activator import LoopBridge, ServingActivator
                from agent.server.batching import BatchingConfig, default_workers, threads_per_worker
                from agent.server.http import InferenceServer, ServerConfig
                from agent.server.model_server import ModelServer
                from agent.server.probation import ServerProbation

                s = self.settings
                workers = s.workers or default_workers()
                batching = BatchingConfig(max_batch_size=s.max_batch_size,
                                          max_queue_delay_s=s.max_queue_delay_ms / 1000.0, workers=workers)
                config = ServerConfig(host=s.host, port=s.port, unix_socket=s.unix_socket, batching=batching)
                models = ModelServer(batching, drain_timeout_s=config.drain_timeout_s)
                server = _ServerThread(models, InferenceServer(models, config))
                if self.configure_app is not None:
                    self.configure_app(server.http.app, models, server.loop)
                server.start()
                bridge = LoopBridge(server.loop)
                threads = s.threads

                def options(ref: ModelRef) -> RuntimeOptions:
                    # Concurrent single-threaded batches serve best on a shared CPU; OpenVINO serialises
                    # the runs of one session, so it gets every CPU as intra-op threads instead.
                    if threads is not None:
                        chosen = threads
                    elif ref.runtime == "openvino":
                        chosen = default_intra_op_threads()
                    else:
                        chosen = threads_per_worker(workers)
                    return RuntimeOptions(intra_op_threads=chosen, device=ref.device)

                self._activator = ServingActivator(bridge, models, serve_as=s.serve_as, options_for=options)
                self._probation = ServerProbation(bridge, self._activator,
                                                  poll_interval_s=s.probation_poll_interval_s,
                                                  on_shadow_compared=self.on_shadow_compared)
                self._server = server
                where = str(s.unix_socket) if server.http.port is None else server.http.url
                log.info("inference server listening on %s", where)
                if self.on_started is not None:
                    self.on_started(where)
            return self._activator, self._probation

    # --- Activator ------------------------------------------------------------------------------

    def restore(self, model: ActiveModel) -> None:
        """Serve the committed model at start-up (no previous version kept)."""
        activator, _ = self._ensure()
        activator.restore(model)
        self.served = model.ref
        self._serving(activator, model.ref)

    def activate(self, model: ActiveModel) -> None:
        activator, _ = self._ensure()
        activator.activate(model)
        self.served = model.ref
        self._serving(activator, model.ref)

    def rollback(self, model: ActiveModel | None) -> None:
        if model is None and self._activator is None:
            self.served = None  # nothing was ever served in this process
            return
        activator, _ = self._ensure()
        activator.rollback(model)
        self.served = model.ref if model is not None else None
        if model is not None:
            self._serving(activator, model.ref)

    def commit(self, model: ActiveModel) -> None:
        activator, _ = self._ensure()
        activator.commit(model)

    def _serving(self, activator: ServingActivator, ref: ModelRef) -> None:
        server = self._server
        if self.on_serving is None or server is None:
            return
        try:
            self.on_serving(server.models, server.loop, activator.name_for(ref))
        except Exception:  # a hook must never fail an activation or a rollback
            log.exception("serving hook failed for %s", ref.model)

    # --- Probation ------------------------------------------------------------------------------

    def watch(self, model: ActiveModel, policy: ProbationPolicy) -> ProbationResult:
        _, probation = self._ensure()
        return probation.watch(model, policy)

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop listening, let in-flight requests finish, release the sessions."""
        with self._lock:
            self._closed = True
            server, self._server = self._server, None
            self._activator = self._probation = None
        if server is not None:
            server.stop(timeout_s)
