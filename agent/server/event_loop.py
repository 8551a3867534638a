"""The event loop the inference server runs on: uvloop when it is installed, else asyncio's own.

On a small model the server's cost per request is mostly event-loop machinery (a selector call per
loop iteration, callback scheduling, transport writes), not inference. uvloop implements the same
asyncio interface on libuv in C and cuts that machinery; aiohttp, futures and
`call_soon_threadsafe` work unchanged on it. It is optional: a device image without it serves
the same protocol on the standard loop, only with more CPU per request.

    kind     "auto" (uvloop if importable), "uvloop" (required; error if missing), "asyncio"
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")
EVENT_LOOP_KINDS = ("auto", "uvloop", "asyncio")


def new_event_loop(kind: str = "auto") -> asyncio.AbstractEventLoop:
    """A fresh loop of `kind`; ValueError for an unknown kind or a required uvloop that is missing."""
    if kind not in EVENT_LOOP_KINDS:
        raise ValueError(f"event loop must be one of {EVENT_LOOP_KINDS}, got {kind!r}")
    if kind != "asyncio":
        try:
            import uvloop
        except ImportError:
            if kind == "uvloop":
                raise ValueError("event loop 'uvloop' asked for, but uvloop is not installed") from None
        else:
            loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
            return loop
    return asyncio.new_event_loop()


def run(main: Coroutine[Any, Any, T], kind: str = "auto") -> T:
    """`asyncio.run(main)` on a loop of `kind` (Python 3.10 has no loop factory for asyncio.run)."""
    loop = new_event_loop(kind)
    try:
        asyncio.set_event_loop(loop)
        return loop.run_until_complete(main)
    finally:
        try:
            pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for task in pending:
                task.cancel()
            if pending:
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            asyncio.set_event_loop(None)
            loop.close()
