"""The engine's Activator and Probation ports over an inference server that starts on first use.

Why lazy: the server stack (aiohttp, numpy, a runtime) costs tens of megabytes, and a device that
serves no model yet should stay small (a Raspberry Pi runs other things). The first `restore` or
`activate` starts the `BackgroundServer`, and from then on the calls go to the server's own
`ServingActivator` and `ServerProbation`. Until then the local endpoint is closed: there is nothing
to serve.

`served` is the slot being served, so the daemon can reconcile it with the `current` pointer after
an update or a crash.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from agent.slots import ModelRef
from agent.state.ports import ActiveModel, ProbationResult
from manifests.assignment import ProbationPolicy

if TYPE_CHECKING:
    from agent.server.activator import ServingActivator
    from agent.server.background import BackgroundServer
    from agent.server.probation import ServerProbation

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServingSettings:
    host: str = "127.0.0.1"
    port: int = 8000
    unix_socket: Path | None = None
    serve_as: str | None = None
    threads: int | None = None
    max_batch_size: int = 32
    max_queue_delay_ms: float = 0.0
    probation_poll_interval_s: float = 1.0


class LazyServing:
    """Activator + Probation; thread-safe start. `on_started(url)` is called once the server listens."""

    def __init__(self, settings: ServingSettings, on_started: Callable[[str], None] | None = None) -> None:
        self.settings = settings
        self.on_started = on_started
        self.served: ModelRef | None = None
        self._lock = threading.Lock()
        self._server: BackgroundServer | None = None
        self._activator: ServingActivator | None = None
        self._probation: ServerProbation | None = None

    @property
    def started(self) -> bool:
        return self._server is not None

    @property
    def url(self) -> str | None:
        return self._server.url if self._server is not None and self.settings.port is not None else None

    def _ensure(self) -> tuple[ServingActivator, ServerProbation]:
        with self._lock:
            if self._activator is None or self._probation is None:
                from agent.runtime import RuntimeOptions
                from agent.server.activator import ServingActivator
                from agent.server.background import BackgroundServer
                from agent.server.batching import BatchingConfig
                from agent.server.http import ServerConfig
                from agent.server.probation import ServerProbation

                s = self.settings
                batching = BatchingConfig(max_batch_size=s.max_batch_size,
                                          max_queue_delay_s=s.max_queue_delay_ms / 1000.0)
                server = BackgroundServer(ServerConfig(host=s.host, port=s.port, unix_socket=s.unix_socket,
                                                       batching=batching)).start()
                assert server.models is not None
                threads = s.threads

                def options(ref: ModelRef) -> RuntimeOptions:
                    return RuntimeOptions(intra_op_threads=threads, device=ref.device)

                self._activator = ServingActivator(server.bridge, server.models, serve_as=s.serve_as,
                                                   options_for=options)
                self._probation = ServerProbation(server.bridge, self._activator,
                                                  poll_interval_s=s.probation_poll_interval_s)
                self._server = server
                log.info("inference server listening on %s", server.url)
                if self.on_started is not None:
                    self.on_started(server.url)
            return self._activator, self._probation

    # --- Activator ------------------------------------------------------------------------------

    def restore(self, model: ActiveModel) -> None:
        """Serve the committed model at start-up (no previous version kept)."""
        activator, _ = self._ensure()
        activator.restore(model)
        self.served = model.ref

    def activate(self, model: ActiveModel) -> None:
        activator, _ = self._ensure()
        activator.activate(model)
        self.served = model.ref

    def rollback(self, model: ActiveModel | None) -> None:
        if model is None and self._activator is None:
            self.served = None  # nothing was ever served in this process
            return
        activator, _ = self._ensure()
        activator.rollback(model)
        self.served = model.ref if model is not None else None

    def commit(self, model: ActiveModel) -> None:
        activator, _ = self._ensure()
        activator.commit(model)

    # --- Probation ------------------------------------------------------------------------------

    def watch(self, model: ActiveModel, policy: ProbationPolicy) -> ProbationResult:
        _, probation = self._ensure()
        return probation.watch(model, policy)

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop listening, let in-flight requests finish, release the sessions."""
        with self._lock:
            server, self._server = self._server, None
            self._activator = self._probation = None
        if server is not None:
            server.stop(timeout_s)
