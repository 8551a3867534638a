"""Measuring a variant on the golden set at build time: accuracy, top-1 agreement with the original
model, numeric drift, non-finite outputs, and build-host latency.

A variant is evaluated through a `Runner` (a batch of inputs in, the first output out), so every runtime
is measured by the same code. Latency is batch-1 on `latency_threads` threads (default 1) over golden
inputs in turn, after a warm-up: a comparison between variants on this host, not a promise about a
device — each device gates the variant on its own hardware.

Accuracy needs labels and a [batch, classes] output; top-1 agreement needs that output shape too. For
other output shapes only the numeric drift against the reference is recorded.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from controller.build.golden import GoldenSet

Runner = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Evaluation:
    samples: int
    accuracy: float | None
    top1_agreement: float | None
    max_abs_error: float
    mean_abs_error: float
    nonfinite_outputs: int
    latency_p50_ms: float
    latency_p95_ms: float
    latency_threads: int


def run_batched(runner: Runner, inputs: np.ndarray, *, batch_size: int, static_batch: int | None) -> np.ndarray:
    """Run every input; a model with a static batch size gets exactly that many rows per call."""
    step = static_batch or batch_size
    outputs = []
    for start in range(0, inputs.shape[0], step):
        chunk = inputs[start : start + step]
        real = chunk.shape[0]
        if static_batch and real < static_batch:
            pad = np.repeat(chunk[-1:], static_batch - real, axis=0)
            chunk = np.concatenate([chunk, pad])
        outputs.append(np.asarray(runner(chunk))[:real])
    return np.concatenate(outputs)


def top1(outputs: np.ndarray) -> np.ndarray | None:
    if outputs.ndim != 2:
        return None
    predicted: np.ndarray = np.argmax(outputs, axis=1)
    return predicted


@dataclass(frozen=True)
class Score:
    accuracy: float | None
    top1_agreement: float | None
    max_abs_error: float  # NaN when the output shapes differ from the reference
    mean_abs_error: float
    nonfinite_outputs: int


def score(outputs: np.ndarray, golden: GoldenSet) -> Score:
    """Accuracy, agreement and drift of `outputs` against the golden set."""
    finite = np.isfinite(outputs)
    nonfinite = int(outputs.size - int(finite.sum()))
    predicted = top1(outputs)
    accuracy = None
    if predicted is not None and golden.labels is not None:
        accuracy = float(np.mean(predicted == golden.labels))
    agreement = None
    max_abs = mean_abs = float("nan")
    reference = golden.reference_outputs
    if reference is not None:
        expected = top1(reference)
        if predicted is not None and expected is not None:
            agreement = float(np.mean(predicted == expected))
        if reference.shape == outputs.shape:
            diff = np.abs(outputs.astype(np.float64) - reference.astype(np.float64))
            diff = np.where(np.isfinite(diff), diff, np.inf)
            max_abs, mean_abs = float(diff.max()), float(diff.mean())
    return Score(accuracy, agreement, max_abs, mean_abs, nonfinite)


def measure_latency(runner: Runner, inputs: np.ndarray, *, runs: int, warmup: int, static_batch: int | None
                    ) -> tuple[float, float]:
    """(p50, p95) milliseconds of single calls with one sample (or one static batch)."""
    rows = static_batch or 1
    samples = [inputs[i : i + 1] for i in range(min(inputs.shape[0], 64))]
    if rows > 1:
        samples = [np.repeat(s, rows, axis=0) for s in samples]
    for i in range(warmup):
        runner(samples[i % len(samples)])
    timings = np.empty(runs)
    for i in range(runs):
        start = time.perf_counter()
        runner(samples[i % len(samples)])
        timings[i] = time.perf_counter() - start
    p50, p95 = np.percentile(timings * 1000.0, [50, 95])
    return float(p50), float(p95)


def evaluate(runner: Runner, golden: GoldenSet, *, static_batch: int | None, batch_size: int = 64,
             latency_runs: int = 30, latency_warmup: int = 3, latency_threads: int = 1) -> Evaluation:
    outputs = run_batched(runner, golden.inputs, batch_size=batch_size, static_batch=static_batch)
    figures = score(outputs, golden)
    p50, p95 = measure_latency(runner, golden.inputs, runs=latency_runs, warmup=latency_warmup,
                               static_batch=static_batch)
    return Evaluation(
        samples=len(golden),
        accuracy=figures.accuracy,
        top1_agreement=figures.top1_agreement,
        max_abs_error=figures.max_abs_error,
        mean_abs_error=figures.mean_abs_error,
        nonfinite_outputs=figures.nonfinite_outputs,
        latency_p50_ms=p50,
        latency_p95_ms=p95,
        latency_threads=latency_threads,
    )


def onnxruntime_runner(model_bytes: bytes, *, threads: int) -> Runner:
    """A CPU ONNX Runtime session over `model_bytes` (all graph optimizations on, as a device would)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def run(batch: np.ndarray) -> np.ndarray:
        out: np.ndarray = session.run(None, {name: batch})[0]
        return out

    return run
