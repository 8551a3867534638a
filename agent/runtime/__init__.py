"""Inference runtimes behind one small interface: load a model file, describe its tensors, run it.

The agent serves, gates and shadow-evaluates models through these ports so that none of those
parts knows which runtime computed a result. Backends are imported lazily by `loader_for`: a
device without OpenVINO or TensorRT installed can still import this package.

    SessionLoader.load(path, RuntimeOptions) -> Session
    Session.inputs / Session.outputs          -> tuple[TensorSpec, ...]
    Session.run({input name: ndarray})        -> {output name: ndarray}

Backends and the class `loader_for` builds (each constructible without arguments):

| runtime       | module                        | class               |
|---------------|-------------------------------|---------------------|
| onnxruntime   | agent.runtime.onnxruntime     | OnnxRuntimeLoader   |
| openvino      | agent.runtime.openvino        | OpenVinoLoader      |
| tensorrt      | agent.runtime.tensorrt        | TensorRTLoader      |

Errors (one tree; each says whether a retry can help):

    InferenceRuntimeError
    ├── RuntimeUnavailableError  the runtime is not installed / unknown here (retry: no)
    ├── ModelLoadError           the runtime refused the model file (retry: no, same file fails again)
    └── InferenceError           a run failed (retry: maybe; often the input was wrong)

Deliberately not here: batching, concurrency and hot swap (agent.server) and the choice of
variant (agent.selection).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

__all__ = [
    "DATATYPES",
    "InferenceError",
    "InferenceRuntimeError",
    "ModelLoadError",
    "RuntimeOptions",
    "RuntimeUnavailableError",
    "Session",
    "SessionLoader",
    "TensorSpec",
    "available_runtimes",
    "datatype_of",
    "default_intra_op_threads",
    "loader_for",
    "numpy_dtype",
]


class InferenceRuntimeError(Exception):
    """Root of the runtime errors; `retryable` says whether trying again can help."""

    retryable = False


class RuntimeUnavailableError(InferenceRuntimeError):
    """The named runtime is unknown or its Python package is not installed on this device."""


class ModelLoadError(InferenceRuntimeError):
    """The runtime could not load the model file (corrupt, unsupported opset, wrong format)."""


class InferenceError(InferenceRuntimeError):
    """A run failed inside the runtime; usually the input, sometimes a transient resource problem."""

    retryable = True


# Open Inference Protocol datatype names -> numpy dtypes. BYTES is not served: none of the
# runtimes the agent ships takes string tensors for the models it deploys.
DATATYPES: Mapping[str, np.dtype[np.generic]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
}
_BY_DTYPE: Mapping[np.dtype[np.generic], str] = {dtype: name for name, dtype in DATATYPES.items()}


def numpy_dtype(datatype: str) -> np.dtype[np.generic]:
    """The numpy dtype of an Open Inference Protocol datatype name; KeyError names the culprit."""
    try:
        return DATATYPES[datatype]
    except KeyError:
        raise KeyError(f"unsupported datatype {datatype!r}; expected one of {sorted(DATATYPES)}") from None


def datatype_of(dtype: npt.DTypeLike) -> str:
    """The Open Inference Protocol datatype name of a numpy dtype."""
    key = np.dtype(dtype)
    try:
        return _BY_DTYPE[key]
    except KeyError:
        raise KeyError(f"numpy dtype {key} has no Open Inference Protocol datatype") from None


@dataclass(frozen=True)
class TensorSpec:
    """One model input or output as the protocol describes it; -1 marks a dynamic dimension."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    @property
    def dtype(self) -> np.dtype[np.generic]:
        return numpy_dtype(self.datatype)

    @property
    def batched(self) -> bool:
        """True when the first dimension is dynamic, so rows of several requests can be stacked."""
        return len(self.shape) > 0 and self.shape[0] == -1


def default_intra_op_threads() -> int:
    """Threads for one inference: the CPUs this process may use, which on a device is all of them.

    Counting the affinity mask rather than `os.cpu_count()` respects cgroup/taskset limits, so a
    container pinned to two cores does not oversubscribe them.
    """
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class RuntimeOptions:
    """How a runtime should run a model. `None` thread counts mean "chosen for this device".

    device: "cpu" for ONNX Runtime; OpenVINO device names ("CPU", "GPU", "NPU", "AUTO") are
    accepted case-insensitively by the OpenVINO loader; "cuda:N" for TensorRT.
    cache_dir: where a backend may keep compiled artefacts (OpenVINO model cache, TensorRT engines).
    """

    intra_op_threads: int | None = None
    inter_op_threads: int = 1
    device: str = "cpu"
    providers: tuple[str, ...] = ()
    cache_dir: Path | None = None
    extra: Mapping[str, str] = field(default_factory=dict)

    def resolved_intra_op_threads(self) -> int:
        if self.intra_op_threads is not None:
            if self.intra_op_threads < 1:
                raise ValueError(f"intra_op_threads must be >= 1, got {self.intra_op_threads}")
            return self.intra_op_threads
        return default_intra_op_threads()


@runtime_checkable
class Session(Protocol):
    """A loaded model. `run` is called from one worker thread at a time per session."""

    @property
    def inputs(self) -> tuple[TensorSpec, ...]: ...

    @property
    def outputs(self) -> tuple[TensorSpec, ...]: ...

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def close(self) -> None: ...


class SessionLoader(Protocol):
    """Turns a model file into a Session; raises ModelLoadError for a file it cannot use."""

    def load(self, path: Path, options: RuntimeOptions) -> Session: ...


_BACKENDS: Mapping[str, tuple[str, str, str]] = {
    # runtime -> (module, class, Python package that must be importable)
    "onnxruntime": ("agent.runtime.onnxruntime", "OnnxRuntimeLoader", "onnxruntime"),
    "openvino": ("agent.runtime.openvino", "OpenVinoLoader", "openvino"),
    "tensorrt": ("agent.runtime.tensorrt", "TensorRTLoader", "tensorrt"),
}


def available_runtimes() -> tuple[str, ...]:
    """Runtimes whose Python package is installed, without importing them (imports are slow)."""
    return tuple(name for name, (_, _, pkg) in _BACKENDS.items() if importlib.util.find_spec(pkg) is not None)


def loader_for(runtime: str) -> SessionLoader:
    """The loader of a runtime by its signed name ("onnxruntime", "openvino", "tensorrt")."""
    try:
        module_name, class_name, package = _BACKENDS[runtime]
    except KeyError:
        raise RuntimeUnavailableError(
            f"unknown runtime {runtime!r}; expected one of {sorted(_BACKENDS)}"
        ) from None
    if importlib.util.find_spec(package) is None:
        raise RuntimeUnavailableError(f"runtime {runtime!r} needs the {package!r} package, not installed here")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise RuntimeUnavailableError(f"runtime {runtime!r} could not be imported: {e}") from e
    loader: SessionLoader = getattr(module, class_name)()
    return loader
