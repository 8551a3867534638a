"""OpenVINO backend: Intel CPUs, iGPUs and NPUs.

Accepts an ONNX file, an OpenVINO IR `.xml` (with its `.bin` beside it), or a folder holding
exactly one IR `.xml` (the unpacked form of the build pipeline's OpenVINO variant). The compiled
model runs with one stream and the LATENCY hint: the server batches requests itself, so OpenVINO
should spend all its threads on one request rather than split them across parallel streams.

One infer request is reused per session (the server calls `run` from one thread at a time; a lock
keeps that true for any other caller). Outputs are copied out of OpenVINO's buffers because the
next inference overwrites them.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import openvino as ov

from agent.runtime import (
    InferenceError,
    ModelLoadError,
    RuntimeOptions,
    TensorSpec,
    datatype_of,
)


def resolve_model_file(path: Path) -> Path:
    """The file OpenVINO should read for `path` (a model file or a folder with one IR)."""
    if path.is_dir():
        candidates = sorted(path.glob("*.xml")) or sorted(path.glob("*.onnx"))
        if len(candidates) != 1:
            raise ModelLoadError(
                f"{path}: expected exactly one .xml (or .onnx) model in the folder, found {len(candidates)}"
            )
        return candidates[0]
    if not path.is_file():
        raise ModelLoadError(f"{path}: model file not found")
    return path


def _spec(port: Any, model: Path) -> TensorSpec:
    try:
        datatype = datatype_of(port.get_element_type().to_dtype())
    except (KeyError, RuntimeError, TypeError) as e:
        raise ModelLoadError(f"{model}: tensor {port.get_any_name()!r} has an unsupported type: {e}") from e
    shape = tuple(d.get_length() if d.is_static else -1 for d in port.get_partial_shape())
    return TensorSpec(name=port.get_any_name(), datatype=datatype, shape=shape)


class OpenVinoSession:
    """A compiled OpenVINO model with one reusable infer request."""

    platform = "openvino"  # the name Triton-style model metadata uses

    def __init__(self, model: ov.Model, compiled: ov.CompiledModel, path: Path) -> None:
        self.path = path
        self._compiled: ov.CompiledModel | None = compiled
        self._request = compiled.create_infer_request()
        self._lock = threading.Lock()
        # Names from the model as read: compiling merges tensor names (an input can come back as
        # `cast_input`), while applications know the names in the model file.
        self._inputs = tuple(_spec(p, path) for p in model.inputs)
        self._outputs = tuple(_spec(p, path) for p in model.outputs)

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        return self._inputs

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        return self._outputs

    def _check(self, feeds: Mapping[str, np.ndarray]) -> None:
        # OpenVINO does not always check a dynamic-shape input against its static dimensions (a
        # [1, 3] tensor into [?, 64] ran here and returned garbage), so check before it reads memory.
        for spec in self._inputs:
            array = feeds.get(spec.name)
            if array is None:
                raise InferenceError(f"{self.path}: missing input {spec.name!r}")
            if array.dtype != spec.dtype or len(array.shape) != len(spec.shape) or any(
                    want not in (-1, got) for want, got in zip(spec.shape, array.shape, strict=True)):
                raise InferenceError(f"{self.path}: input {spec.name!r} expects {spec.datatype} "
                                     f"{list(spec.shape)}, got {array.dtype} {list(array.shape)}")

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        self._check(feeds)
        with self._lock:
            if self._compiled is None:
                raise InferenceError(f"{self.path}: session is closed")
            try:
                self._request.infer(dict(feeds))
                return {
                    spec.name: np.array(self._request.get_output_tensor(i).data, copy=True)
                    for i, spec in enumerate(self._outputs)
                }
            except Exception as e:  # OpenVINO raises RuntimeError and pybind types; wrap at the boundary.
                raise InferenceError(f"{self.path}: openvino inference failed: {e}") from e

    def close(self) -> None:
        with self._lock:
            self._compiled = None
            self._request = None


class OpenVinoLoader:
    """SessionLoader for ONNX files and OpenVINO IR."""

    def load(self, path: Path, options: RuntimeOptions) -> OpenVinoSession:
        model_file = resolve_model_file(Path(path))
        device = options.device.upper()
        core = ov.Core()
        if options.cache_dir is not None:
            core.set_property({"CACHE_DIR": str(options.cache_dir)})
        config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1"}
        if device == "CPU":
            config["INFERENCE_NUM_THREADS"] = options.resolved_intra_op_threads()
            # OpenVINO may otherwise lower CPU precision on its own (0.5 % absolute error on the digits
            # MLP here); precision is the variant's business, chosen and gated at build time.
            config["INFERENCE_PRECISION_HINT"] = "f32"
        config.update(options.extra)
        try:
            model = core.read_model(str(model_file))
            compiled = core.compile_model(model, device, config)
        except Exception as e:
            raise ModelLoadError(f"{model_file}: openvino could not load the model on {device}: {e}") from e
        return OpenVinoSession(model, compiled, model_file)
