"""The models a server holds and the hot-swap API the update engine drives.

    swap(name, session, version)      load + warm beside the old one, switch `current`, then
                                      either keep the old one as `previous` (probation) or drain
                                      and close it
    rollback(name)                    switch `current` back to the still-loaded `previous`
                                      (instant: it is warm) and drain + close the rejected one
    commit(name)                      drain + close `previous`

Every switch is one assignment on the event loop. Batches read `current` once when they form, so
a batch runs entirely on one version, and a retired version is closed only after its last batch
and its last pinned request are done: a swap under load fails no request.

Warm-up runs zero tensors at batch 1 and at the maximum batch size in a separate thread, so the
first live batch on the new session does not pay for allocation and the old one keeps serving
meanwhile. A session that cannot warm up is closed and the old one stays current (SwapError).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from agent.runtime import Session
from agent.server.batching import Batcher, BatchingConfig, BatchObserver, Outputs
from agent.server.errors import ModelNotFoundError, SwapError, UnavailableError
from agent.server.protocol import InferRequest
from agent.server.versions import LoadedVersion, warmup_feeds

log = logging.getLogger(__name__)


class ServedModel:
    """One model name: its current version, the previous one while on probation, and its batcher."""

    def __init__(self, name: str, batching: BatchingConfig) -> None:
        self.name = name
        self.current: LoadedVersion | None = None
        self.previous: LoadedVersion | None = None
        self.observers: list[BatchObserver] = []
        self.batcher = Batcher(name, lambda: self.current, batching, self.observers)
        self.swap_lock = asyncio.Lock()
        self.swaps = 0

    @property
    def ready(self) -> bool:
        return self.current is not None

    def version(self, version: str | None) -> LoadedVersion:
        """The version a request names (current when None); 404 if it is not loaded here."""
        current = self.current
        if version is None or version == "":
            if current is None:
                raise UnavailableError(f"model {self.name!r} has no loaded version")
            return current
        for candidate in (current, self.previous):
            if candidate is not None and candidate.version == version and not candidate.retired:
                return candidate
        loaded = [v.version for v in (current, self.previous) if v is not None]
        raise ModelNotFoundError(f"model {self.name!r} has no loaded version {version!r}; loaded: {loaded}")

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "current": self.current.describe() if self.current else None,
            "previous": self.previous.describe() if self.previous else None,
            "queued": self.batcher.queued,
            "cancelled_in_queue": self.batcher.cancelled,
            "swaps": self.swaps,
        }


class ModelServer:
    """Holds served models; every method runs on the server's event loop."""

    def __init__(self, batching: BatchingConfig | None = None, drain_timeout_s: float = 30.0) -> None:
        self.batching = batching or BatchingConfig()
        self.drain_timeout_s = drain_timeout_s
        self.models: dict[str, ServedModel] = {}
        self._loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model-load")

    def model(self, name: str) -> ServedModel:
        try:
            return self.models[name]
        except KeyError:
            raise ModelNotFoundError(f"unknown model {name!r}; served: {sorted(self.models)}") from None

    async def infer(self, name: str, version: str | None, request: InferRequest) -> tuple[Outputs, LoadedVersion]:
        model = self.model(name)
        target = model.version(version)
        pinned = target if version else None
        return await model.batcher.submit(request.inputs, request.rows, target.inputs, pinned)

    @staticmethod
    def record(version: LoadedVersion, latency_s: float) -> None:
        """Count one completed request of `version` and its end-to-end latency."""
        version.stats.requests += 1
        version.stats.latency.record(latency_s)

    async def stats(self) -> list[dict[str, Any]]:
        """Counters and latency histogram (wire form) of every loaded version, for telemetry.

        Cumulative since each version was loaded; histograms use fixed buckets, so a reader takes
        differences between two snapshots of the same version, or merges across versions, exactly.
        """
        out: list[dict[str, Any]] = []
        for model in self.models.values():
            for role, version in (("current", model.current), ("previous", model.previous)):
                if version is not None:
                    out.append({"model": model.name, "version": version.version, "variant": version.variant,
                                "role": role, "loaded_at_s": version.loaded_at_s, **version.stats.snapshot()})
        return out

    def add_observer(self, name: str, observer: BatchObserver) -> None:
        self.model(name).observers.append(observer)

    def remove_observer(self, name: str, observer: BatchObserver) -> None:
        observers = self.model(name).observers
        if observer in observers:
            observers.remove(observer)

    async def swap(
        self,
        name: str,
        session: Session,
        version: str,
        variant: str = "",
        *,
        keep_previous: bool = False,
        warmup: Mapping[str, np.ndarray] | None = None,
        origin: str = "",
    ) -> LoadedVersion:
        """Serve `session` as `version` of `name`; the first swap of a name starts serving it."""
        loop = asyncio.get_running_loop()
        try:
            new = LoadedVersion(name, version, variant, session, origin)
        except Exception as e:
            await loop.run_in_executor(self._loader, session.close)
            raise SwapError(f"model {name!r} version {version}: unusable session: {e}") from e
        try:
            await loop.run_in_executor(self._loader, self._warm, new, warmup)
        except Exception as e:
            await loop.run_in_executor(self._loader, session.close)
            raise SwapError(f"model {name!r} version {version}: warm-up failed, still serving the "
                            f"old version: {e}") from e
        model = self.models.get(name)
        if model is None:
            model = self.models[name] = ServedModel(name, self.batching)
        async with model.swap_lock:
            old, older = model.current, model.previous
            model.current = new  # the switch: batches formed from here on run on `new`
            model.swaps += 1
            if keep_previous:
                model.previous = old
                retire = [older]
            else:
                retire = [old]
            log.info("model %s: now serving version %s (%s)", name, version, variant or "-")
        await asyncio.gather(*(self._retire(v) for v in retire if v is not None))
        return new

    async def rollback(self, name: str) -> LoadedVersion:
        """Serve the previous version again (already loaded and warm) and release the current one."""
        model = self.model(name)
        async with model.swap_lock:
            if model.previous is None:
                raise SwapError(f"model {name!r}: no previous version is loaded to roll back to")
            rejected, model.current, model.previous = model.current, model.previous, None
            model.swaps += 1
            restored = model.current
            log.warning("model %s: rolled back to version %s", name, restored.version)
        if rejected is not None:
            await self._retire(rejected)
        return restored

    async def commit(self, name: str) -> None:
        """Probation passed: release the previous version."""
        model = self.model(name)
        async with model.swap_lock:
            previous, model.previous = model.previous, None
        if previous is not None:
            await self._retire(previous)

    async def unload(self, name: str) -> None:
        model = self.models.pop(name, None)
        if model is None:
            return
        await model.batcher.stop()
        for v in (model.current, model.previous):
            if v is not None:
                await self._retire(v)

    async def close(self) -> None:
        for name in list(self.models):
            await self.unload(name)
        self._loader.shutdown(wait=True)

    def _warm(self, version: LoadedVersion, feeds: Mapping[str, np.ndarray] | None) -> None:
        runs = [dict(feeds)] if feeds is not None else [warmup_feeds(version.inputs, 1)]
        if feeds is None and version.batched and self.batching.max_batch_size > 1:
            runs.append(warmup_feeds(version.inputs, self.batching.max_batch_size))
        expected = {s.name for s in version.outputs}
        for run in runs:
            outputs = version.session.run(run)
            if set(outputs) != expected:
                raise SwapError(f"outputs {sorted(outputs)} do not match the declared {sorted(expected)}")

    async def _retire(self, version: LoadedVersion) -> None:
        """Let in-flight work finish on `version`, then close its session."""
        if version.retired:
            return
        version.retired = True
        if not await version.wait_idle(self.drain_timeout_s):
            log.warning("%r still busy after %.0f s; closing it anyway", version, self.drain_timeout_s)
        version.closed = True
        await asyncio.get_running_loop().run_in_executor(self._loader, version.session.close)
