"""The gate's measuring process: `python -m agent.gate.child REQUEST.json`.

Runs in a child process so that a runtime that segfaults, aborts or eats all memory on a bad model
takes down only this process; the agent reads the report file or, if there is none, reports the
crash. The child leaves as soon as its parent dies, so a killed agent leaves no gate behind.

Order of work: load the candidate and run the golden set first (its peak RSS is then the candidate's
own footprint over the interpreter baseline), then the current model, then latency interleaved
A, B, B, A, ... on the same inputs so that both models see the same background load.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from agent.gate.report import GateReport, ModelFigures
from agent.runtime import RuntimeOptions, Session, loader_for

MAX_GOLDEN_BYTES = 512 * 1024 * 1024


@dataclass(frozen=True)
class GateRequest:
    candidate: str
    runtime: str
    precision: str
    device: str
    model_path: str
    golden_path: str
    report_path: str
    hardware_class: str = "unknown"
    current_path: str | None = None
    current_runtime: str | None = None
    current_device: str = "cpu"
    latency_rounds: int = 300
    latency_budget_s: float = 20.0
    warmup_rounds: int = 10
    intra_op_threads: int | None = None
    cache_dir: str | None = None
    runtime_extra: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> GateRequest:
        return cls(**json.loads(text))


@dataclass(frozen=True)
class Golden:
    inputs: np.ndarray
    labels: np.ndarray | None
    reference: np.ndarray | None


def load_golden(path: Path) -> Golden:
    """Read golden.npz without pickles; refuse sets that cannot be checked."""
    if path.stat().st_size > MAX_GOLDEN_BYTES:
        raise ValueError(f"golden set {path} exceeds {MAX_GOLDEN_BYTES} bytes")
    with np.load(path, allow_pickle=False) as data:
        if "inputs" not in data.files:
            raise ValueError(f"golden set {path} has no 'inputs' array (has {sorted(data.files)})")
        inputs = np.asarray(data["inputs"])
        labels = np.asarray(data["labels"]) if "labels" in data.files else None
        reference = np.asarray(data["reference_outputs"]) if "reference_outputs" in data.files else None
    n = inputs.shape[0] if inputs.ndim else 0
    if n == 0:
        raise ValueError(f"golden set {path} has no samples")
    for name, arr in (("labels", labels), ("reference_outputs", reference)):
        if arr is not None and arr.shape[0] != n:
            raise ValueError(f"golden set {path}: {name} has {arr.shape[0]} rows, inputs have {n}")
    if labels is None and reference is None:
        raise ValueError(f"golden set {path} has neither labels nor reference_outputs")
    return Golden(inputs, labels, reference)


def _scores(session: Session, outputs: Mapping[str, np.ndarray], golden: Golden) -> np.ndarray:
    """The output that holds class scores: float, 2-D, as wide as the reference if there is one."""
    width = golden.reference.shape[-1] if golden.reference is not None else None
    for spec in session.outputs:
        arr = outputs[spec.name]
        if arr.dtype.kind == "f" and arr.ndim >= 2 and (width is None or arr.shape[-1] == width):
            return arr.reshape(arr.shape[0], -1)
    first = outputs[session.outputs[0].name]
    return first.reshape(first.shape[0], -1)


def _run_all(session: Session, golden: Golden) -> np.ndarray:
    spec = session.inputs[0]
    inputs = golden.inputs.astype(spec.dtype, copy=False)
    if spec.batched:  # batches of 32: within any engine's optimization profile, bounded memory
        parts = [_scores(session, session.run({spec.name: inputs[i:i + 32]}), golden)
                 for i in range(0, inputs.shape[0], 32)]
        return np.concatenate(parts, axis=0)
    rows = [_scores(session, session.run({spec.name: inputs[i:i + 1]}), golden) for i in range(inputs.shape[0])]
    return np.concatenate(rows, axis=0)


def _maxrss_mb() -> float:
    """Peak RSS of this process image. VmHWM, not ru_maxrss: on Linux ru_maxrss survives exec and
    would report the peak of the forked parent (the agent) instead of ours."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except (OSError, ValueError, IndexError):
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _rss_now_mb() -> float:
    """Resident set size right now (Linux /proc; falls back to the peak elsewhere)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / (1024.0 * 1024.0)
    except (OSError, ValueError, IndexError):
        return _maxrss_mb()


def _quality(scores: np.ndarray, golden: Golden, figures: ModelFigures) -> ModelFigures:
    finite = np.isfinite(scores)
    nonfinite = int(scores.size - int(finite.sum()))
    # argmax over NaN returns the NaN's index (often class 0): count only rows whose scores are finite.
    top1 = np.where(finite.all(axis=1), np.argmax(np.nan_to_num(scores, nan=-np.inf), axis=1), -1)
    accuracy = float(np.mean(top1 == golden.labels.reshape(-1))) if golden.labels is not None else None
    agreement = None
    if golden.reference is not None:
        agreement = float(np.mean(top1 == np.argmax(golden.reference.reshape(scores.shape[0], -1), axis=1)))
    return replace(figures, samples=int(scores.shape[0]), nonfinite_values=nonfinite, accuracy=accuracy,
                   agreement=agreement)


def _load(runtime: str, device: str, path: str, request: GateRequest,
          extra: Mapping[str, str] | None = None) -> tuple[Session | None, ModelFigures]:
    options = RuntimeOptions(intra_op_threads=request.intra_op_threads, device=device, extra=dict(extra or {}),
                             cache_dir=Path(request.cache_dir) if request.cache_dir else None)
    started = time.perf_counter()
    try:
        session = loader_for(runtime).load(Path(path), options)
    except Exception as e:  # any refusal of the runtime is a finding, not a crash of the gate
        return None, ModelFigures(loaded=False, load_error=f"{type(e).__name__}: {e}"[:500])
    return session, ModelFigures(loaded=True, load_s=time.perf_counter() - started)


def _with_latency(figures: ModelFigures, samples_s: list[float]) -> ModelFigures:
    arr = np.asarray(samples_s) * 1000.0
    return replace(figures, latency_p50_ms=float(np.percentile(arr, 50)),
                   latency_p95_ms=float(np.percentile(arr, 95)), latency_p99_ms=float(np.percentile(arr, 99)))


def measure(request: GateRequest) -> GateReport:
    started = time.perf_counter()
    golden = load_golden(Path(request.golden_path))
    loader_for(request.runtime)  # import the runtime before the baseline so it is not billed to the model
    baseline_mb = _rss_now_mb()
    candidate, figures = _load(request.runtime, request.device, request.model_path, request,
                               request.runtime_extra)
    report = GateReport(candidate=request.candidate, runtime=request.runtime, precision=request.precision,
                        hardware_class=request.hardware_class, measured=figures)
    if candidate is None:
        return replace(report, duration_s=time.perf_counter() - started)
    try:
        cand_scores = _run_all(candidate, golden)
    except Exception as e:
        failed = replace(figures, loaded=False, load_error=f"inference failed: {type(e).__name__}: {e}"[:500])
        return replace(report, measured=failed, duration_s=time.perf_counter() - started)
    figures = _quality(cand_scores, golden, figures)
    figures = replace(figures, peak_rss_mb=max(0.0, _maxrss_mb() - baseline_mb), process_peak_rss_mb=_maxrss_mb())
    current: Session | None = None
    current_figures: ModelFigures | None = None
    agreement_with_current: float | None = None
    if request.current_path is not None and request.current_runtime is not None:
        current, current_figures = _load(request.current_runtime, request.current_device, request.current_path,
                                         request)
        if current is not None:
            try:
                cur_scores = _run_all(current, golden)
            except Exception as e:
                # A release that changes the input signature: nothing to compare against.
                current_figures = replace(current_figures, loaded=False,
                                          load_error=f"cannot run this golden set: {type(e).__name__}: {e}"[:500])
                current = None
            else:
                current_figures = _quality(cur_scores, golden, current_figures)
                agreement_with_current = float(np.mean(np.argmax(cand_scores, axis=1)
                                                       == np.argmax(cur_scores, axis=1)))
    rounds, cand_lat, cur_lat = _interleaved_latency(candidate, current, golden, request)
    figures = _with_latency(figures, cand_lat)
    if current is not None and current_figures is not None and cur_lat:
        current_figures = _with_latency(current_figures, cur_lat)
    paired = float(np.median(np.asarray(cand_lat) / np.asarray(cur_lat))) if cur_lat else None
    return replace(report, measured=figures, current=current_figures, agreement_with_current=agreement_with_current,
                   latency_rounds=rounds, paired_latency_ratio=paired, duration_s=time.perf_counter() - started)


def _one_input(session: Session, golden: Golden, i: int) -> dict[str, np.ndarray]:
    spec = session.inputs[0]
    row = golden.inputs[i % golden.inputs.shape[0]][None, ...]
    return {spec.name: np.ascontiguousarray(row.astype(spec.dtype, copy=False))}


def _interleaved_latency(candidate: Session, current: Session | None, golden: Golden,
                         request: GateRequest) -> tuple[int, list[float], list[float]]:
    """Alternate A, B then B, A each round so neither model always runs right after the other."""
    models: list[Session] = [candidate] + ([current] if current is not None else [])
    feeds = [[_one_input(m, golden, i) for i in range(min(golden.inputs.shape[0], 64))] for m in models]
    for _ in range(request.warmup_rounds):
        for m, f in zip(models, feeds, strict=True):
            m.run(f[0])
    samples: list[list[float]] = [[] for _ in models]
    deadline = time.perf_counter() + request.latency_budget_s
    rounds = 0
    while rounds < request.latency_rounds and (rounds < 5 or time.perf_counter() < deadline):
        order = range(len(models)) if rounds % 2 == 0 else reversed(range(len(models)))
        for k in order:
            feed = feeds[k][rounds % len(feeds[k])]
            t0 = time.perf_counter()
            models[k].run(feed)
            samples[k].append(time.perf_counter() - t0)
        rounds += 1
    return rounds, samples[0], samples[1] if current is not None else []


def _exit_with_parent() -> None:
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(0.5)
            if os.getppid() != parent:
                os._exit(3)

    threading.Thread(target=watch, name="gate-parent-watch", daemon=True).start()


def main(argv: list[str]) -> int:
    _exit_with_parent()
    request = GateRequest.from_json(Path(argv[1]).read_text(encoding="utf-8"))
    try:
        report = measure(request)
    except Exception as e:  # a bad golden set or a runtime error outside loading
        report = GateReport(candidate=request.candidate, runtime=request.runtime, precision=request.precision,
                            hardware_class=request.hardware_class, measured=ModelFigures(),
                            error=f"gate_error: {type(e).__name__}: {e}"[:500])
    doc: dict[str, Any] = report.to_dict()
    tmp = Path(request.report_path + ".tmp")
    tmp.write_text(json.dumps(doc), encoding="utf-8")
    os.replace(tmp, request.report_path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
