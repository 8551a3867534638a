"""Dynamic batching: one queue per served model, worker tasks that stack rows and run them off the loop.

    handlers ──submit()──▶ [queue of pending requests] ──worker──▶ executor thread: session.run(batch)
                      ▲ 429 when full                      │ picks the version once per batch
                      └──────────── each caller's own rows ◀┘

A worker takes the oldest request, decides which version runs the batch (the request's pinned
version, else the model's current one at that moment) and adds later requests while they fit in
`max_batch_size` rows, are for the same version and have the same non-batch dimensions. The
version is read once per batch, so a swap between two batches never mixes versions inside one.
While a batch runs, new requests queue up and form the next batch; `max_queue_delay_s` > 0
additionally lets a short batch wait that long (from its oldest request's arrival) for more rows.

Requests validated against one version's specs but dispatched to another (a swap happened while
they were queued) are checked again against the new specs; a request that no longer fits gets a
RequestError rather than a wrong answer.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from agent.runtime import InferenceRuntimeError, Session, TensorSpec
from agent.server.errors import (
    ModelExecutionError,
    OverloadedError,
    RequestError,
    ServerError,
    UnavailableError,
)
from agent.server.protocol import check_against_specs
from agent.server.versions import LoadedVersion, count_nonfinite_rows
from agent.server.workers import InferenceThreads

log = logging.getLogger(__name__)

Outputs = dict[str, np.ndarray]
BatchObserver = Callable[[LoadedVersion, Mapping[str, np.ndarray], Mapping[str, np.ndarray]], None]


@dataclass(frozen=True)
class BatchingConfig:
    max_batch_size: int = 32
    max_queue_delay_s: float = 0.0
    max_queue_requests: int = 256
    workers: int = 1

    def __post_init__(self) -> None:
        if self.max_batch_size < 1 or self.max_queue_requests < 1 or self.workers < 1:
            raise ValueError(f"batching sizes must be >= 1: {self}")
        if not 0.0 <= self.max_queue_delay_s <= 10.0:
            raise ValueError(f"max_queue_delay_s must be within [0, 10], got {self.max_queue_delay_s}")


class _Pending:
    __slots__ = ("inputs", "rows", "specs", "pinned", "future", "enqueued_at_s")

    def __init__(self, inputs: Mapping[str, np.ndarray], rows: int | None, specs: tuple[TensorSpec, ...],
                 pinned: LoadedVersion | None, future: asyncio.Future[tuple[Outputs, LoadedVersion]],
                 enqueued_at_s: float) -> None:
        self.inputs = inputs
        self.rows = rows
        self.specs = specs
        self.pinned = pinned
        self.future = future
        self.enqueued_at_s = enqueued_at_s

    def fail(self, error: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(error)


def _execute(session: Session, feeds: Mapping[str, np.ndarray], rows: int | None) -> tuple[Outputs, int]:
    outputs = session.run(feeds)
    return outputs, count_nonfinite_rows(outputs, rows)


class Batcher:
    """The queue and workers of one served model."""

    def __init__(self, name: str, current: Callable[[], LoadedVersion | None], config: BatchingConfig,
                 observers: list[BatchObserver]) -> None:
        self.name = name
        self.config = config
        self._current = current
        self._observers = observers
        self._queue: collections.deque[_Pending] = collections.deque()
        self._wake = asyncio.Event()
        self._threads = InferenceThreads(config.workers, f"infer-{name}")
        self._workers: list[asyncio.Task[None]] = []
        self._stopped = False

    @property
    def queued(self) -> int:
        return len(self._queue)

    def start(self) -> None:
        self._workers = [asyncio.create_task(self._work(), name=f"batcher-{self.name}-{i}")
                         for i in range(self.config.workers)]

    async def submit(self, inputs: Mapping[str, np.ndarray], rows: int | None, specs: tuple[TensorSpec, ...],
                     pinned: LoadedVersion | None = None) -> tuple[Outputs, LoadedVersion]:
        """Queue one validated request; resolves to its own output rows and the version that ran it."""
        if self._stopped:
            raise UnavailableError(f"model {self.name!r} is shutting down")
        if len(self._queue) >= self.config.max_queue_requests:
            raise OverloadedError(
                f"model {self.name!r}: queue full ({self.config.max_queue_requests} requests waiting)"
            )
        loop = asyncio.get_running_loop()
        pending = _Pending(inputs, rows, specs, pinned, loop.create_future(), loop.time())
        if pinned is not None:
            pinned.acquire()
        self._queue.append(pending)
        self._wake.set()
        return await pending.future

    async def stop(self) -> None:
        self._stopped = True
        for task in self._workers:
            task.cancel()
        for task in self._workers:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        while self._queue:
            self._drop(self._queue.popleft(), UnavailableError(f"model {self.name!r} was unloaded"))
        await asyncio.get_running_loop().run_in_executor(None, self._threads.shutdown)

    def _drop(self, pending: _Pending, error: BaseException | None) -> None:
        """Remove a request from the batcher's care; `error` None when its caller already went away."""
        if pending.pinned is not None:
            pending.pinned.release()
        if error is not None:
            pending.fail(error)

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._queue:
                self._wake.clear()
                await self._wake.wait()
            if self.config.max_queue_delay_s > 0:
                await self._gather_more(loop)
            taken = self._take()
            if taken is None:
                continue
            batch, version = taken
            try:
                await self._run(loop, batch, version)
            except Exception:  # a bug must not kill the worker and strand every later request
                log.exception("model %s: batch failed unexpectedly", self.name)
                for p in batch:
                    p.fail(ModelExecutionError(f"model {self.name!r}: internal error running the batch"))

    async def _gather_more(self, loop: asyncio.AbstractEventLoop) -> None:
        deadline = self._queue[0].enqueued_at_s + self.config.max_queue_delay_s
        while sum(p.rows or 1 for p in self._queue) < self.config.max_batch_size:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), remaining)
            except asyncio.TimeoutError:
                return

    def _fits(self, pending: _Pending, version: LoadedVersion) -> bool:
        """Bring a request's validation up to `version`'s specs; False (and failed) if it no longer fits."""
        if pending.specs is version.inputs or pending.specs == version.inputs:
            return True
        try:
            pending.rows = check_against_specs(pending.inputs, version.inputs, version.batched)
        except RequestError as e:
            self._drop(pending, RequestError(f"model {self.name!r} changed to version {version.version} "
                                             f"while the request waited: {e}"))
            return False
        pending.specs = version.inputs
        return True

    def _take(self) -> tuple[list[_Pending], LoadedVersion] | None:
        head = self._queue.popleft()
        if head.future.done():  # the caller went away
            self._drop(head, None)
            return None
        version = head.pinned or self._current()
        if version is None or version.closed:
            self._drop(head, UnavailableError(f"model {self.name!r} has no loaded version"))
            return None
        if not self._fits(head, version):
            return None
        batch = [head]
        if version.batched and head.rows is not None:
            rows = head.rows
            tails = {n: a.shape[1:] for n, a in head.inputs.items()}
            while self._queue:
                nxt = self._queue[0]
                if nxt.pinned not in (None, version) or nxt.rows is None:
                    break
                if nxt.future.done():
                    self._drop(self._queue.popleft(), None)
                    continue
                if rows + nxt.rows > self.config.max_batch_size:
                    break
                if nxt.specs is not version.inputs and nxt.specs != version.inputs:
                    break  # re-validated when it becomes the head of a batch
                if any(a.shape[1:] != tails[n] for n, a in nxt.inputs.items()):
                    break
                batch.append(self._queue.popleft())
                rows += nxt.rows
        return batch, version

    async def _run(self, loop: asyncio.AbstractEventLoop, batch: list[_Pending], version: LoadedVersion) -> None:
        if len(batch) == 1:
            feeds: Mapping[str, np.ndarray] = batch[0].inputs
            total_rows = batch[0].rows
        else:
            feeds = {s.name: np.concatenate([p.inputs[s.name] for p in batch]) for s in version.inputs}
            total_rows = sum(p.rows or 0 for p in batch)
        version.acquire()
        try:
            outputs, nonfinite = await self._threads.submit(_execute, version.session, feeds,
                                                            total_rows if version.batched else None)
        except Exception as e:
            version.stats.requests += len(batch)
            version.stats.errors += len(batch)
            error: ServerError = (
                ModelExecutionError(f"model {self.name!r} version {version.version}: {e}")
                if isinstance(e, InferenceRuntimeError) else
                ModelExecutionError(f"model {self.name!r} version {version.version}: runtime error: {e!r}")
            )
            for p in batch:
                p.fail(error)
            return
        finally:
            version.release()
            for p in batch:
                if p.pinned is not None:
                    p.pinned.release()
        version.stats.batches += 1
        version.stats.rows += total_rows or 1
        version.stats.nonfinite_rows += nonfinite
        if len(batch) == 1:
            if not batch[0].future.done():
                batch[0].future.set_result((outputs, version))
        else:
            self._split(batch, version, outputs, total_rows or 0)
        for observe in self._observers:
            try:
                observe(version, feeds, outputs)
            except Exception:
                log.exception("model %s: batch observer failed", self.name)

    def _split(self, batch: list[_Pending], version: LoadedVersion, outputs: Outputs, total_rows: int) -> None:
        wrong = [n for n, a in outputs.items() if a.ndim == 0 or a.shape[0] != total_rows]
        if wrong:
            version.stats.errors += len(batch)
            version.stats.requests += len(batch)
            error = ModelExecutionError(
                f"model {self.name!r}: outputs {wrong} do not have one row per input row ({total_rows})"
            )
            for p in batch:
                p.fail(error)
            return
        start = 0
        for p in batch:
            end = start + (p.rows or 0)
            if not p.future.done():
                p.future.set_result(({n: a[start:end] for n, a in outputs.items()}, version))
            start = end
