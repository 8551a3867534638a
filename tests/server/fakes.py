"""Wrappers of our own Session port around real runtime sessions: gate, record or break runs."""

from __future__ import annotations

import threading
from collections.abc import Mapping

import numpy as np

from agent.runtime import InferenceError, Session, TensorSpec


class RecordingSession:
    """Delegates to a real session; records batch sizes, can hold runs at a gate, can fail or close."""

    def __init__(self, inner: Session, name: str = "") -> None:
        self.inner = inner
        self.name = name
        self.batch_rows: list[int] = []
        self.fed: list[dict[str, np.ndarray]] = []  # copies of the feeds of every run
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()  # set when a run is waiting at (or passed) the gate
        self.fail_with: str | None = None
        self.closed = False
        self.runs_after_close = 0
        self._lock = threading.Lock()

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        return self.inner.inputs

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        return self.inner.outputs

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.entered.set()
        self.gate.wait(30)
        with self._lock:
            if self.closed:
                self.runs_after_close += 1
            first = next(iter(feeds.values()))
            self.batch_rows.append(int(first.shape[0]) if first.ndim else 1)
            self.fed.append({n: np.array(a, copy=True) for n, a in feeds.items()})
        if self.fail_with is not None:
            raise InferenceError(self.fail_with)
        return self.inner.run(feeds)

    def close(self) -> None:
        with self._lock:
            self.closed = True
        self.inner.close()
