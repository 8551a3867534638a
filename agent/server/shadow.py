"""Shadow evaluation: replay a sample of the new version's live inputs on the previous version.

During probation the previous version stays loaded. This observer sees every batch the new
version completes, keeps a random sample of them (a bounded backlog: when the shadow falls behind,
samples are dropped and counted, never queued without limit) and runs the previous session on
the same inputs in its own thread, after the callers already have their answers: the request
path never waits for the shadow.

Compared per row, on the first floating-point output with a class axis (or the first output):
top-1 agreement (argmax over the last axis), mean top-1 confidence of each version, and the mean
absolute difference of the outputs: the "output/confidence distribution" probation judges.
Confidence is a probability: the row itself when it already is a probability vector, else its
softmax (a model that outputs logits). Outputs without a class axis have no confidence
(`confidence_rows` counts only the rows that have one).

`on_compared(new_version, feeds, new_outputs, previous_outputs)`, when given, sees every replayed
sample after the comparison (sample capture keeps the rows the two versions disagree on).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from agent.server.versions import LoadedVersion
from agent.server.workers import InferenceThreads

log = logging.getLogger(__name__)
ComparedObserver = Callable[[LoadedVersion, Mapping[str, np.ndarray], Mapping[str, np.ndarray],
                             Mapping[str, np.ndarray]], None]


@dataclass(frozen=True)
class _Totals:
    """Running sums of the comparisons, replaced as a whole so a reader on another thread never sees
    one sum updated and its row count not (agreement above 1, a confidence mean off by a batch)."""

    rows: int = 0
    agreed: int = 0
    conf_rows: int = 0
    conf_new: float = 0.0
    conf_prev: float = 0.0
    abs_diff: float = 0.0


@dataclass(frozen=True)
class ShadowFigures:
    rows: int = 0
    agreed_rows: int = 0
    dropped_batches: int = 0
    failed_batches: int = 0
    mean_confidence_new: float | None = None
    mean_confidence_previous: float | None = None
    mean_abs_diff: float | None = None
    confidence_rows: int = 0

    @property
    def agreement(self) -> float | None:
        return self.agreed_rows / self.rows if self.rows else None

    @property
    def confidence_drop(self) -> float | None:
        """How far the new version's mean top-1 confidence lies below the previous one's (negative: above)."""
        if self.mean_confidence_new is None or self.mean_confidence_previous is None:
            return None
        return self.mean_confidence_previous - self.mean_confidence_new

    def to_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "agreed_rows": self.agreed_rows, "agreement": self.agreement,
                "dropped_batches": self.dropped_batches, "failed_batches": self.failed_batches,
                "mean_confidence_new": self.mean_confidence_new,
                "mean_confidence_previous": self.mean_confidence_previous,
                "confidence_rows": self.confidence_rows, "confidence_drop": self.confidence_drop,
                "mean_abs_diff": self.mean_abs_diff}


def scores_output(outputs: Mapping[str, np.ndarray]) -> str:
    """The output to compare: the first float output with a class axis, else the first output."""
    for name, array in outputs.items():
        if array.dtype.kind == "f" and array.ndim >= 2:
            return name
    return next(iter(outputs))


def top1_confidence(scores: np.ndarray) -> np.ndarray:
    """Per row of a [rows, classes] array: the top-1 probability (softmax unless already probabilities).

    Non-finite rows count as confidence 0: a model that emits NaN has no confidence to speak of.
    """
    flat = scores.astype(np.float64)
    finite = np.isfinite(flat).all(axis=1)
    confidence = np.zeros(flat.shape[0])
    good = flat[finite]
    if good.shape[0]:
        is_probability = bool(np.all(good >= 0) and np.allclose(good.sum(axis=1), 1.0, atol=1e-3))
        if not is_probability:
            shifted = np.exp(good - good.max(axis=1, keepdims=True))
            good = shifted / shifted.sum(axis=1, keepdims=True)
        confidence[finite] = good.max(axis=1)
    return confidence


class ShadowEvaluator:
    """Observer of `new`'s batches that replays a sample on `previous`; runs on the server's loop."""

    def __init__(self, new: LoadedVersion, previous: LoadedVersion, sample_rate: float = 0.2,
                 max_backlog_batches: int = 8, max_rows_per_batch: int = 64, seed: int | None = None,
                 on_compared: ComparedObserver | None = None) -> None:
        if not 0.0 < sample_rate <= 1.0:
            raise ValueError(f"sample_rate must be within (0, 1], got {sample_rate}")
        self.new = new
        self.previous = previous
        self.sample_rate = sample_rate
        self.on_compared = on_compared
        self.max_rows_per_batch = max_rows_per_batch
        self._rng = random.Random(seed)
        self._backlog: collections.deque[tuple[dict[str, np.ndarray], dict[str, np.ndarray]]] = (
            collections.deque(maxlen=max_backlog_batches))
        self._wake = asyncio.Event()
        self._thread = InferenceThreads(1, f"shadow-{new.model}")
        self._task: asyncio.Task[None] | None = None
        self._dropped = self._failed = 0
        self._totals = _Totals()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"shadow-{self.new.model}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await asyncio.get_running_loop().run_in_executor(None, self._thread.shutdown)

    def observe(self, version: LoadedVersion, feeds: Mapping[str, np.ndarray],
                outputs: Mapping[str, np.ndarray]) -> None:
        if version is not self.new or self._rng.random() >= self.sample_rate:
            return
        rows = self.max_rows_per_batch if version.batched else None
        sample = ({k: v[:rows] for k, v in feeds.items()}, {k: v[:rows] for k, v in outputs.items()})
        if len(self._backlog) == self._backlog.maxlen:
            self._dropped += 1  # the deque drops the oldest sample; count it
        self._backlog.append(sample)
        self._wake.set()

    def figures(self) -> ShadowFigures:
        t = self._totals  # one read: a consistent snapshot even from another thread
        n, c = t.rows, t.conf_rows
        return ShadowFigures(
            rows=n, agreed_rows=t.agreed, dropped_batches=self._dropped, failed_batches=self._failed,
            mean_confidence_new=t.conf_new / c if c else None,
            mean_confidence_previous=t.conf_prev / c if c else None,
            mean_abs_diff=t.abs_diff / n if n else None, confidence_rows=c,
        )

    async def _run(self) -> None:
        while True:
            while not self._backlog:
                self._wake.clear()
                await self._wake.wait()
            feeds, new_outputs = self._backlog.popleft()
            if self.previous.closed or self.previous.retired:
                return
            self.previous.acquire()
            try:
                old_outputs = await self._thread.submit(self.previous.session.run, feeds)
            except Exception as e:
                self._failed += 1
                log.warning("shadow run on %r failed: %s", self.previous, e)
                continue
            finally:
                self.previous.release()
            self._compare(new_outputs, old_outputs)
            if self.on_compared is not None:
                try:
                    self.on_compared(self.new, feeds, new_outputs, old_outputs)
                except Exception:
                    log.exception("shadow observer failed")

    def _compare(self, new: Mapping[str, np.ndarray], old: Mapping[str, np.ndarray]) -> None:
        name = scores_output(new)
        a, b = new.get(name), old.get(name)
        if a is None or b is None or a.shape != b.shape:
            self._failed += 1
            return
        a2 = a.reshape(a.shape[0], -1) if a.ndim >= 2 else a.reshape(-1, 1)
        b2 = b.reshape(b.shape[0], -1) if b.ndim >= 2 else b.reshape(-1, 1)
        rows = a2.shape[0]
        t = self._totals
        conf_rows, conf_new, conf_prev = t.conf_rows, t.conf_new, t.conf_prev
        if a2.shape[1] > 1:
            agreed = int(np.sum(np.argmax(a2, axis=1) == np.argmax(b2, axis=1)))
            conf_new += float(top1_confidence(a2).sum())
            conf_prev += float(top1_confidence(b2).sum())
            conf_rows += rows
        else:
            agreed = int(np.sum(a2[:, 0] == b2[:, 0]))
        with np.errstate(invalid="ignore", over="ignore"):
            diff = np.abs(a2.astype(np.float64) - b2.astype(np.float64)).mean(axis=1)
        abs_diff = float(np.nan_to_num(diff, nan=1.0, posinf=1.0).sum())
        self._totals = _Totals(t.rows + rows, t.agreed + agreed, conf_rows, conf_new, conf_prev,
                               t.abs_diff + abs_diff)
