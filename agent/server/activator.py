"""The update engine's Activator port, implemented over the ModelServer's hot-swap API.

The engine runs in its own thread and calls these blocking methods; the ModelServer lives on the
server's event loop. Loading a model file (the slow, CPU-bound part) happens here in the caller's
thread; only the swap itself is sent to the loop, through a `LoopBridge`.

    activate(model)        load the slot's file, swap it in, keep the old version loaded (probation)
    rollback(model)        the old version is still loaded → switch back instantly; otherwise
                           (e.g. after a restart) load `model` from its slot and swap to it;
                           None → stop serving (nothing was served before)
    commit(model)          release the previous version (probation passed)
    restore(model)         at agent start: serve the committed model, no previous

The protocol name of a model is its release's model name (`ModelRef.model`) unless `serve_as`
fixes one name for the device's applications.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from agent.runtime import RuntimeOptions, SessionLoader, loader_for
from agent.server.batching import threads_per_worker
from agent.server.model_server import ModelServer
from agent.server.versions import LoadedVersion
from agent.slots import ModelRef
from agent.state.ports import ActiveModel

log = logging.getLogger(__name__)
T = TypeVar("T")


class LoopBridge:
    """Runs coroutines on the server's event loop from another thread and waits for them."""

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout_s: float = 120.0) -> None:
        self.loop = loop
        self.timeout_s = timeout_s

    def call(self, coro: Coroutine[Any, Any, T], timeout_s: float | None = None) -> T:
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return future.result(self.timeout_s if timeout_s is None else timeout_s)




def variant_of(ref: ModelRef) -> str:
    """The variant id: the last part of the signed target name (`models/<m>/<v>/<variant-id>`)."""
    return ref.target.rsplit("/", 1)[-1]


class ServingActivator:
    """Activator port: blocking calls from the engine thread, swaps on the server's loop."""

    def __init__(self, bridge: LoopBridge, models: ModelServer, *, serve_as: str | None = None,
                 options_for: Callable[[ModelRef], RuntimeOptions] | None = None,
                 loaders: Callable[[str], SessionLoader] = loader_for) -> None:
        self.bridge = bridge
        self.models = models
        self.serve_as = serve_as
        # default: the CPUs shared out among the server's inference workers (see default_workers)
        # (OpenVINO serialises runs on one stream, so it gets every CPU.)
        self.options_for = options_for or (lambda ref: RuntimeOptions(
            device=ref.device,
            intra_op_threads=None if ref.runtime == "openvino" else threads_per_worker(models.batching.workers)))
        self.loaders = loaders
        self.served_name: str | None = None  # the protocol name currently served
        self._stale_name: str | None = None  # served before an activation that changed the name

    def name_for(self, ref: ModelRef) -> str:
        return self.serve_as or ref.model

    def _load(self, model: ActiveModel) -> Any:
        return self.loaders(model.ref.runtime).load(model.path, self.options_for(model.ref))

    def activate(self, model: ActiveModel) -> None:
        session = self._load(model)
        name = self.name_for(model.ref)
        self.bridge.call(self.models.swap(name, session, model.ref.version, variant_of(model.ref),
                                          keep_previous=True, origin=model.ref.sha256))
        if self.served_name is not None and self.served_name != name:
            self._stale_name = self.served_name  # keeps serving until commit, for its applications
        self.served_name = name
        log.info("activated %s version %s (%s) on probation", name, model.ref.version, variant_of(model.ref))

    def restore(self, model: ActiveModel) -> None:
        session = self._load(model)
        name = self.name_for(model.ref)
        self.bridge.call(self.models.swap(name, session, model.ref.version, variant_of(model.ref),
                                          origin=model.ref.sha256))
        self.served_name = name

    def rollback(self, model: ActiveModel | None) -> None:
        rejected = self.served_name
        if model is None:
            if rejected is not None:
                self.bridge.call(self.models.unload(rejected))
            self.served_name = self._stale_name
            self._stale_name = None
            return
        name = self.name_for(model.ref)
        served = self.models.models.get(name)
        previous = served.previous if served is not None else None
        if name == rejected and previous is not None and previous.origin == model.ref.sha256:
            self.bridge.call(self.models.rollback(name))  # still loaded and warm: one switch
        elif served is not None and served.current is not None and served.current.origin == model.ref.sha256:
            pass  # already serving it (the rejected model was served under another name)
        else:
            session = self._load(model)
            self.bridge.call(self.models.swap(name, session, model.ref.version, variant_of(model.ref),
                                              origin=model.ref.sha256))
            self.bridge.call(self.models.commit(name))  # nothing else stays loaded beside it
        if rejected is not None and rejected != name:
            self.bridge.call(self.models.unload(rejected))
        self.served_name = name
        self._stale_name = None
        log.warning("rolled back to %s version %s", name, model.ref.version)

    def commit(self, model: ActiveModel) -> None:
        name = self.name_for(model.ref)
        self.bridge.call(self.models.commit(name))
        if self._stale_name is not None and self._stale_name != name:
            self.bridge.call(self.models.unload(self._stale_name))
        self._stale_name = None

    def versions(self, model: ActiveModel) -> tuple[LoadedVersion | None, LoadedVersion | None]:
        """(the version serving `model`, the previous version kept beside it), if loaded."""
        served = self.models.models.get(self.name_for(model.ref))
        if served is None:
            return None, None
        current = served.current if served.current and served.current.origin == model.ref.sha256 else None
        return current, served.previous
