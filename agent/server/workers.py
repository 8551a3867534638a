"""Inference threads: run blocking runtime calls off the event loop with the cheapest possible hand-off.

`loop.run_in_executor` costs two concurrent.futures round trips (a Future with its condition
variable, then `wrap_future` chaining callbacks back to the loop): about twice the ~35 µs of a bare
thread hand-off measured here, which matters when a small model answers in 12 µs. These threads
take jobs from one SimpleQueue and report back with a single `call_soon_threadsafe`: either
resolving an asyncio future (`submit`) or calling a completion callback on the loop (`call`).

Threads are daemons so a runtime call that never returns cannot keep the process alive at exit;
`shutdown` waits for jobs already taken.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

Done = Callable[[Any, "BaseException | None"], None]
_Job = tuple[asyncio.AbstractEventLoop, Done, Callable[..., Any], tuple[Any, ...]]


def _resolve(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():  # the awaiting caller was cancelled meanwhile
        return
    if error is None:
        future.set_result(result)
    else:
        future.set_exception(error)


class InferenceThreads:
    """A fixed set of worker threads fed from one queue."""

    def __init__(self, count: int, name: str) -> None:
        if count < 1:
            raise ValueError(f"need at least one inference thread, got {count}")
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._threads = [
            threading.Thread(target=self._serve, name=f"{name}-{i}", daemon=True) for i in range(count)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """Run `fn(*args)` on an inference thread; await the returned future on the calling loop."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._jobs.put((loop, lambda result, error: _resolve(future, result, error), fn, args))
        return future

    def call(self, fn: Callable[..., Any], args: tuple[Any, ...], loop: asyncio.AbstractEventLoop,
             done: Done) -> None:
        """Run `fn(*args)` on an inference thread, then `done(result, error)` on `loop`."""
        self._jobs.put((loop, done, fn, args))

    def _serve(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            loop, done, fn, args = job
            try:
                result, error = fn(*args), None
            except BaseException as e:  # handed to `done` on the loop, which decides
                result, error = None, e
            # RuntimeError: the loop closed while the job ran; nobody is waiting any more.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(done, result, error)

    def shutdown(self, timeout_s: float = 30.0) -> None:
        for _ in self._threads:
            self._jobs.put(None)
        for thread in self._threads:
            thread.join(timeout_s)
