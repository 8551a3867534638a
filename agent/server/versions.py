"""One loaded version of a served model: its session, tensor specs, counters and reference count.

A `LoadedVersion` is owned by the event loop; only the loop mutates its counters, so they need no
lock. `refs` counts batches executing on the session plus requests pinned to this version
(`/versions/<v>/infer`) that are still queued; a retired version is closed only once `refs` is 0,
which is how a swap lets in-flight work finish on the old session before releasing it.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from agent.metrics.histogram import LatencyHistogram
from agent.runtime import Session, TensorSpec


@dataclass
class VersionStats:
    """Live counters of one version since it was loaded (what probation and telemetry read)."""

    requests: int = 0  # completed infer requests, successful or not
    errors: int = 0  # requests that failed inside the model (5xx), not client mistakes
    rows: int = 0
    nonfinite_rows: int = 0  # rows with a NaN or Inf anywhere in their floating-point outputs
    batches: int = 0
    # batches by their row count (bounded by max_batch_size): shows whether batching forms under load
    batch_rows: dict[int, int] = field(default_factory=dict)
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)

    def snapshot(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "errors": self.errors,
            "rows": self.rows,
            "nonfinite_rows": self.nonfinite_rows,
            "batches": self.batches,
            "batch_rows": {str(rows): count for rows, count in sorted(self.batch_rows.items())},
            "latency": self.latency.to_wire(),
        }


def is_batched(inputs: tuple[TensorSpec, ...], outputs: tuple[TensorSpec, ...]) -> bool:
    """Rows of several requests can be stacked only if every input and output has a dynamic first dim."""
    return bool(inputs) and all(s.batched for s in inputs) and all(s.batched for s in outputs)


class LoadedVersion:
    """A session serving (or ready to serve) one model version."""

    def __init__(self, model: str, version: str, variant: str, session: Session, origin: str = "") -> None:
        self.model = model
        self.version = version
        self.variant = variant
        self.origin = origin  # what it was loaded from (the slot's sha256), to recognise it later
        self.session = session
        self.inputs: tuple[TensorSpec, ...] = tuple(session.inputs)
        self.outputs: tuple[TensorSpec, ...] = tuple(session.outputs)
        self.batched = is_batched(self.inputs, self.outputs)
        self.loaded_at_s = time.time()
        self.stats = VersionStats()
        self.refs = 0
        self.retired = False
        self.closed = False
        self._idle = asyncio.Event()
        self._idle.set()

    def acquire(self) -> None:
        self.refs += 1
        self._idle.clear()

    def release(self) -> None:
        self.refs -= 1
        if self.refs <= 0:
            self.refs = 0
            self._idle.set()

    async def wait_idle(self, timeout_s: float) -> bool:
        """Wait until nothing uses this version; False if work was still running at the deadline."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except asyncio.TimeoutError:
            return False
        return True

    def describe(self) -> dict[str, Any]:
        return {"version": self.version, "variant": self.variant, "batched": self.batched,
                "loaded_at_s": self.loaded_at_s, "retired": self.retired}

    def __repr__(self) -> str:
        return f"LoadedVersion({self.model!r}, version={self.version!r}, variant={self.variant!r})"


def warmup_feeds(inputs: tuple[TensorSpec, ...], rows: int) -> dict[str, np.ndarray]:
    """Zero tensors of `rows` rows with every other dynamic dimension set to 1."""
    feeds: dict[str, np.ndarray] = {}
    for spec in inputs:
        shape = tuple(
            rows if (i == 0 and spec.batched) else (1 if d == -1 else d) for i, d in enumerate(spec.shape)
        )
        feeds[spec.name] = np.zeros(shape, dtype=spec.dtype)
    return feeds


def count_nonfinite_rows(outputs: Mapping[str, np.ndarray], rows: int | None) -> int:
    """Rows (or whole results when unbatched) holding a NaN or Inf in a floating-point output."""
    bad: np.ndarray | None = None
    for array in outputs.values():
        if array.dtype.kind != "f":
            continue
        finite = np.isfinite(array)
        if finite.all():  # the common case, without per-row bookkeeping
            continue
        if rows is None or array.ndim == 0 or array.shape[0] != rows:
            if not finite.all():
                return rows if rows is not None else 1
            continue
        row_bad = ~finite.reshape(rows, -1).all(axis=1) if array.ndim > 1 else ~finite
        bad = row_bad if bad is None else (bad | row_bad)
    return 0 if bad is None else int(bad.sum())


def finite_or_nan(value: float) -> float | None:
    """JSON-safe number for reports: None instead of NaN."""
    return None if math.isnan(value) else value
