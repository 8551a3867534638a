"""The capture hook on the inference path: picks rows per the policy, writes them off the request path.

`SampleCapturer.observe(version, feeds, outputs)` has the inference server's `BatchObserver`
signature (`ModelServer.add_observer(name, capturer.observe)`). For each row of a completed batch it
computes the top-1 confidence (the row itself when it already is a probability vector, else its
softmax), asks `policy.decide`, and hands kept rows to one writer thread through a bounded queue: the
request that produced the row never waits for a disk. When the writer falls behind, rows are dropped
and counted (`stats["dropped_backlog"]`), never queued without limit.

`observe_disagreement(version, feeds, new_outputs, previous_outputs)` is for the probation shadow
(which already runs the previous model on a sample of live inputs): rows whose top-1 differ are
candidates with reason `disagreement`.

`set_policy(policy)` takes the assignment's `CapturePolicy`; turning capture off also deletes every
sample not yet uploaded (the off switch is a privacy switch, not a pause).
"""

from __future__ import annotations

import io
import logging
import queue
import random
import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from agent.capture.errors import CaptureError
from agent.capture.policy import CaptureBudget, candidate_reason, decide
from agent.capture.spool import CaptureSpool, SampleMeta
from manifests.assignment import CapturePolicy

log = logging.getLogger(__name__)


def scores_name(outputs: Mapping[str, np.ndarray]) -> str:
    for name, array in outputs.items():
        if array.dtype.kind == "f" and array.ndim >= 2:
            return name
    return next(iter(outputs))


def top1(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(class index, confidence) per row; softmax unless the rows already are probabilities."""
    flat = scores.reshape(scores.shape[0], -1).astype(np.float64)
    is_probability = bool(np.all(flat >= 0) and np.allclose(flat.sum(axis=1), 1.0, atol=1e-3))
    if not is_probability:
        shifted = np.exp(flat - flat.max(axis=1, keepdims=True))
        flat = shifted / shifted.sum(axis=1, keepdims=True)
    return flat.argmax(axis=1), flat.max(axis=1)


def encode_row(feeds: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray], row: int) -> bytes:
    buffer = io.BytesIO()
    arrays = {f"input.{k}": np.ascontiguousarray(v[row : row + 1]) for k, v in feeds.items()}
    arrays.update({f"output.{k}": np.ascontiguousarray(v[row : row + 1]) for k, v in outputs.items()})
    np.savez(buffer, **arrays)  # type: ignore[arg-type]
    return buffer.getvalue()


class SampleCapturer:
    def __init__(self, device_id: str, spool: CaptureSpool, policy: CapturePolicy | None = None,
                 clock: Callable[[], float] = time.time, rng: random.Random | None = None,
                 max_backlog: int = 64) -> None:
        self.device_id = device_id
        self.spool = spool
        self.policy = policy or CapturePolicy()
        self.clock = clock
        self.rng = rng or random.Random()
        self.budget = CaptureBudget((m.captured_at_s, m.size_bytes) for m in spool.pending())
        self.stats: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._queue: queue.Queue[tuple[SampleMeta, bytes] | None] = queue.Queue(max_backlog)
        self._thread: threading.Thread | None = None

    def set_policy(self, policy: CapturePolicy) -> None:
        with self._lock:
            self.policy = policy
            if not policy.enabled:
                discarded = self.spool.clear()
                self.stats["discarded_by_policy"] += discarded

    # -- hooks ---------------------------------------------------------------------------------------

    def observe(self, version: Any, feeds: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray]) -> None:
        if not self.policy.enabled or not outputs:
            return
        _, confidence = top1(outputs[scores_name(outputs)])
        for row in range(confidence.shape[0]):
            self._offer(version, feeds, outputs, row, float(confidence[row]), disagreed=False)

    def observe_disagreement(self, version: Any, feeds: Mapping[str, np.ndarray],
                             new_outputs: Mapping[str, np.ndarray], previous_outputs: Mapping[str, np.ndarray]) -> None:
        if not (self.policy.enabled and self.policy.capture_disagreement) or not new_outputs:
            return
        name = scores_name(new_outputs)
        new_class, confidence = top1(new_outputs[name])
        old_class, _ = top1(previous_outputs[name])
        for row in np.nonzero(new_class != old_class)[0]:
            self._offer(version, feeds, new_outputs, int(row), float(confidence[row]), disagreed=True)

    def _offer(self, version: Any, feeds: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray], row: int,
               confidence: float, disagreed: bool) -> None:
        with self._lock:
            policy = self.policy
            draw = self.rng.random()
            if candidate_reason(policy, confidence, disagreed, draw) is None:
                self.stats["skipped:not_selected"] += 1
                return  # the common case: no serialization for rows nobody wants
            data = encode_row(feeds, outputs, row)
            decision = decide(policy, self.budget, now_s=self.clock(), size_bytes=len(data), confidence=confidence,
                              disagreed=disagreed, draw=draw)
        if not decision.keep:
            self.stats[f"skipped:{decision.refused}"] += 1
            return
        meta = SampleMeta(sample_id=secrets.token_hex(12), device_id=self.device_id, model=version.model,
                          version=version.version, variant=version.variant, reason=str(decision.reason),
                          confidence=round(confidence, 6), captured_at_s=self.clock(), size_bytes=len(data),
                          sha256="")
        if self._thread is None:
            self.write(meta, data)
            return
        try:
            self._queue.put_nowait((meta, data))
        except queue.Full:
            self.stats["dropped_backlog"] += 1

    # -- writer --------------------------------------------------------------------------------------

    def write(self, meta: SampleMeta, data: bytes) -> None:
        try:
            self.spool.add(meta, data)
            self.stats[f"captured:{meta.reason}"] += 1
            self.stats["spooled_bytes"] += len(data)
        except CaptureError as e:
            self.stats["write_errors"] += 1
            log.warning("capture write failed: %s", e)

    def start(self) -> None:
        """Write kept rows from a thread (without `start`, `observe` writes synchronously: tests, tools)."""
        self._thread = threading.Thread(target=self._run, name="capture-writer", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout_s)
            self._thread = None

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            self.write(*item)
