"""Dynamic batching: one queue per served model; batches run on inference threads, off the loop.

    handlers ──submit()──▶ [queue of pending requests] ──launch──▶ inference thread: session.run(batch)
                      ▲ 429 when full                        │ picks the version once per batch
                      └──────────── each caller's own rows ◀──┘ (done → launch the next batch)

When a request arrives and an inference thread is free, its batch launches at once (no wake-up
of a separate worker task: on a 12 µs model every loop iteration shows). While batches run, new
requests queue; each completion launches the next batch with everything that queued meanwhile, so
batches grow with load by themselves. `max_queue_delay_s` > 0 additionally lets a short batch wait
that long (from its oldest request's arrival) for more rows.

A batch takes the oldest request, decides which version runs it (the request's pinned version,
else the model's current one at that moment) and adds later requests while they fit in
`max_batch_size` rows, are for the same version and have the same non-batch dimensions. The version
is read once per batch, so a swap between two batches never mixes versions inside one. Stacking
the rows (a copy of every input) happens on the inference thread, not on the event loop.

Requests validated against one version's specs but dispatched to another (a swap happened while
they were queued) are checked again against the new specs; a request that no longer fits gets a
RequestError rather than a wrong answer.

A caller that goes away while its request waits (the HTTP server cancels the handler of a client
that disconnected) takes its request out of the queue at once: its rows never reach the runtime,
its queue slot is free for others, and `cancelled` counts it. Once a request is in a running batch
it cannot be taken out (the rows are already stacked); its answer is discarded and the other
requests of that batch get theirs.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from agent.runtime import InferenceRuntimeError, Session, TensorSpec, default_intra_op_threads
from agent.server.errors import (
    ModelExecutionError,
    OverloadedError,
    RequestError,
    UnavailableError,
)
from agent.server.protocol import check_against_specs
from agent.server.versions import LoadedVersion, count_nonfinite_rows
from agent.server.workers import InferenceThreads

log = logging.getLogger(__name__)

Outputs = dict[str, np.ndarray]
BatchObserver = Callable[[LoadedVersion, Mapping[str, np.ndarray], Mapping[str, np.ndarray]], None]


def default_workers() -> int:
    """Batches to run at once on this device: one per CPU (at most 4), each on one intra-op thread.

    Request-level parallelism beats intra-op parallelism for serving: a MobileNetV2 here scales
    1.5x from one intra-op thread to two, while two single-threaded batches scale nearly 2x, and
    intra-op threads stall at their barriers whenever the CPU is shared (HTTP, other processes).
    The price is single-request latency on an idle device; `workers=1` with all CPUs as intra-op
    threads is the latency-first setting.
    """
    return min(4, default_intra_op_threads())


def threads_per_worker(workers: int) -> int:
    """Intra-op threads per session so that all workers together use the CPUs once."""
    return max(1, default_intra_op_threads() // max(1, workers))


@dataclass(frozen=True)
class BatchingConfig:
    max_batch_size: int = 32
    max_queue_delay_s: float = 0.0
    max_queue_requests: int = 256
    workers: int = 1  # batches of one model running at the same time

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


def _execute(session: Session, parts: Sequence[Mapping[str, np.ndarray]], names: Sequence[str],
             rows: int | None) -> tuple[Mapping[str, np.ndarray], Outputs, int]:
    """On an inference thread: stack the requests' rows, run, count non-finite rows."""
    feeds = parts[0] if len(parts) == 1 else {n: np.concatenate([p[n] for p in parts]) for n in names}
    outputs = session.run(feeds)
    return feeds, outputs, count_nonfinite_rows(outputs, rows)


class Batcher:
    """The queue of one served model and the launching of its batches; lives on the event loop."""

    def __init__(self, name: str, current: Callable[[], LoadedVersion | None], config: BatchingConfig,
                 observers: list[BatchObserver]) -> None:
        self.name = name
        self.config = config
        self._current = current
        self._observers = observers
        self._queue: collections.deque[_Pending] = collections.deque()
        self._threads = InferenceThreads(config.workers, f"infer-{name}")
        self._running = 0
        self._timer: asyncio.TimerHandle | None = None
        self._stopped = False
        self.cancelled = 0  # requests whose caller went away while they were queued (never run)

    @property
    def queued(self) -> int:
        return len(self._queue)

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
        self._launch_ready(loop)
        try:
            return await pending.future
        except asyncio.CancelledError:
            self._withdraw(pending)
            raise

    def _withdraw(self, pending: _Pending) -> None:
        """The caller was cancelled: drop its request if it still waits (see the module docstring)."""
        try:
            self._queue.remove(pending)
        except ValueError:
            return  # already in a batch (or dropped): nothing left to withdraw
        self._abandoned(pending)
        if not self._queue and self._timer is not None:
            self._timer.cancel()
            self._timer = None

    async def stop(self) -> None:
        self._stopped = True
        if self._timer is not None:
            self._timer.cancel()
        while self._queue:
            self._drop(self._queue.popleft(), UnavailableError(f"model {self.name!r} was unloaded"))
        await asyncio.get_running_loop().run_in_executor(None, self._threads.shutdown)

    def _abandoned(self, pending: _Pending) -> None:
        self.cancelled += 1
        self._drop(pending, None)

    def _drop(self, pending: _Pending, error: BaseException | None) -> None:
        """Remove a request from the batcher's care; `error` None when its caller already went away."""
        if pending.pinned is not None:
            pending.pinned.release()
        if error is not None:
            pending.fail(error)

    def _launch_ready(self, loop: asyncio.AbstractEventLoop) -> None:
        """Launch batches while a thread is free and the queue holds a batch that may go now."""
        while self._queue and self._running < self.config.workers and not self._stopped:
            if self.config.max_queue_delay_s > 0:
                deadline = self._queue[0].enqueued_at_s + self.config.max_queue_delay_s
                if loop.time() < deadline and sum(p.rows or 1 for p in self._queue) < self.config.max_batch_size:
                    if self._timer is None:
                        self._timer = loop.call_at(deadline, self._on_timer, loop)
                    return
            taken = self._take()
            if taken is not None:
                self._launch(loop, *taken)

    def _on_timer(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        self._launch_ready(loop)

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
            self._abandoned(head)
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
                    self._abandoned(self._queue.popleft())
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

    def _launch(self, loop: asyncio.AbstractEventLoop, batch: list[_Pending], version: LoadedVersion) -> None:
        total_rows = sum(p.rows or 0 for p in batch) if version.batched else None
        version.acquire()  # in the same loop step as reading `current`: a swap cannot slip in between
        self._running += 1
        self._threads.call(
            _execute, (version.session, [p.inputs for p in batch], [s.name for s in version.inputs], total_rows),
            loop, lambda result, error: self._done(loop, batch, version, total_rows, result, error))

    def _done(self, loop: asyncio.AbstractEventLoop, batch: list[_Pending], version: LoadedVersion,
              total_rows: int | None, result: tuple[Mapping[str, np.ndarray], Outputs, int] | None,
              error: BaseException | None) -> None:
        self._running -= 1
        version.release()
        for p in batch:
            if p.pinned is not None:
                p.pinned.release()
        try:
            if result is None:
                self._fail(batch, version, error)
            else:
                self._deliver(batch, version, total_rows, *result)
        except Exception:  # a bug here must not strand the queue behind this batch
            log.exception("model %s: finishing a batch failed", self.name)
            for p in batch:
                p.fail(ModelExecutionError(f"model {self.name!r}: internal error finishing the batch"))
        self._launch_ready(loop)

    def _fail(self, batch: list[_Pending], version: LoadedVersion, error: BaseException | None) -> None:
        version.stats.requests += len(batch)
        version.stats.errors += len(batch)
        detail = str(error) if isinstance(error, InferenceRuntimeError) else f"runtime error: {error!r}"
        failure = ModelExecutionError(f"model {self.name!r} version {version.version}: {detail}")
        for p in batch:
            p.fail(failure)

    def _deliver(self, batch: list[_Pending], version: LoadedVersion, total_rows: int | None,
                 feeds: Mapping[str, np.ndarray], outputs: Outputs, nonfinite: int) -> None:
        stats = version.stats
        stats.batches += 1
        stats.rows += total_rows or 1
        stats.batch_rows[total_rows or 1] = stats.batch_rows.get(total_rows or 1, 0) + 1
        stats.nonfinite_rows += nonfinite
        if len(batch) == 1:
            if not batch[0].future.done():
                batch[0].future.set_result((outputs, version))
        else:
            wrong = [n for n, a in outputs.items() if a.ndim == 0 or a.shape[0] != total_rows]
            if wrong:
                self._fail(batch, version, ModelExecutionError(
                    f"outputs {wrong} do not have one row per input row ({total_rows})"))
                return
            start = 0
            for p in batch:
                end = start + (p.rows or 0)
                if not p.future.done():
                    p.future.set_result(({n: a[start:end] for n, a in outputs.items()}, version))
                start = end
        for observe in self._observers:
            try:
                observe(version, feeds, outputs)
            except Exception:
                log.exception("model %s: batch observer failed", self.name)
