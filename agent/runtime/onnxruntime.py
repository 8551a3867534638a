"""ONNX Runtime backend: the default runtime on every device class.

Thread settings come from RuntimeOptions (intra-op threads default to the CPUs this process may
use; inter-op 1 because the served graphs are sequential CNNs/MLPs where parallel branches buy
nothing). `RuntimeOptions.extra` entries are passed through as ONNX Runtime session config
entries (e.g. `session.intra_op.allow_spinning=0` on a device that must not burn idle CPU).

Deliberately not here: choosing execution providers from the hardware profile (agent.selection
decides; it passes `providers`), and quantization (done on the controller at build time).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from agent.runtime import (
    InferenceError,
    ModelLoadError,
    RuntimeOptions,
    TensorSpec,
)

# ONNX Runtime's type strings -> Open Inference Protocol datatypes.
_ORT_TYPES: Mapping[str, str] = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
}


def _spec(arg: Any, model: Path) -> TensorSpec:
    datatype = _ORT_TYPES.get(arg.type)
    if datatype is None:
        raise ModelLoadError(
            f"{model}: tensor {arg.name!r} has type {arg.type}; the server handles numeric tensors only "
            f"({', '.join(sorted(_ORT_TYPES))})"
        )
    # Symbolic (str) and unknown (None) dimensions are dynamic: -1 on the protocol.
    shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in (arg.shape or ()))
    return TensorSpec(name=arg.name, datatype=datatype, shape=shape)


class OnnxRuntimeSession:
    """One ort.InferenceSession with its tensor specs resolved once at load time."""

    platform = "onnxruntime_onnx"  # the name Triton-style model metadata uses

    def __init__(self, session: ort.InferenceSession, path: Path) -> None:
        self._session: ort.InferenceSession | None = session
        self.path = path
        self._inputs = tuple(_spec(a, path) for a in session.get_inputs())
        self._outputs = tuple(_spec(a, path) for a in session.get_outputs())
        self._output_names = [o.name for o in self._outputs]

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        return self._inputs

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        return self._outputs

    @property
    def providers(self) -> Sequence[str]:
        providers: list[str] = self._live().get_providers()
        return providers

    def _live(self) -> ort.InferenceSession:
        if self._session is None:
            raise InferenceError(f"{self.path}: session is closed")
        return self._session

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        session = self._live()
        try:
            results = session.run(self._output_names, dict(feeds))
        except Exception as e:  # ORT raises its own (pybind) exception types; wrap at the boundary.
            raise InferenceError(f"{self.path}: onnxruntime run failed: {e}") from e
        return {name: np.asarray(value) for name, value in zip(self._output_names, results, strict=True)}

    def close(self) -> None:
        # ORT frees native memory when the last reference goes; dropping ours is the release.
        self._session = None


class OnnxRuntimeLoader:
    """SessionLoader for `.onnx` files."""

    def load(self, path: Path, options: RuntimeOptions) -> OnnxRuntimeSession:
        path = Path(path)
        if not path.is_file():
            raise ModelLoadError(f"{path}: model file not found")
        so = ort.SessionOptions()
        so.intra_op_num_threads = options.resolved_intra_op_threads()
        so.inter_op_num_threads = max(1, options.inter_op_threads)
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3  # warnings about unused initializers etc. are noise on a device
        for key, value in options.extra.items():
            so.add_session_config_entry(key, value)
        providers = list(options.providers) or ["CPUExecutionProvider"]
        unknown = [p for p in providers if p not in ort.get_available_providers()]
        if unknown:
            raise ModelLoadError(
                f"{path}: execution providers {unknown} not available; have {ort.get_available_providers()}"
            )
        try:
            session = ort.InferenceSession(str(path), sess_options=so, providers=providers)
        except Exception as e:
            raise ModelLoadError(f"{path}: onnxruntime could not load the model: {e}") from e
        return OnnxRuntimeSession(session, path)
