"""Inference threads: run blocking runtime calls off the event loop with the cheapest possible hand-off.

`loop.run_in_executor` costs two concurrent.futures round trips (a Future with its condition
variable, then `wrap_future` chaining callbacks back to the loop): about twice the ~35 µs of a bare
thread hand-off measured here, which matters when a small model answers in 12 µs. These threads
take jobs from one SimpleQueue and resolve the caller's asyncio future with a single
`call_soon_threadsafe`.

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

_Job = tuple[asyncio.AbstractEventLoop, "asyncio.Future[Any]", Callable[..., Any], tuple[Any, ...]]


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
        self._jobs.put((loop, future, fn, args))
        return future

    def _serve(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            loop, future, fn, args = job
            try:
                result = fn(*args)
            except BaseException as e:  # handed to the awaiting coroutine, which decides
                self._post(loop, future, None, e)
            else:
                self._post(loop, future, result, None)

    @staticmethod
    def _post(loop: asyncio.AbstractEventLoop, future: asyncio.Future[Any], result: Any,
              error: BaseException | None) -> None:
        # RuntimeError: the loop closed while the job ran; nobody is waiting any more.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(_resolve, future, result, error)

    def shutdown(self, timeout_s: float = 30.0) -> None:
        for _ in self._threads:
            self._jobs.put(None)
        for thread in self._threads:
            thread.join(timeout_s)
