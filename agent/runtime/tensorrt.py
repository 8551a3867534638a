"""TensorRT backend: build an engine on the device from the ONNX variant, cache it, run it.

The signed TensorRT variant is an ONNX file; the engine is built here on first use and cached by
(ONNX sha256, TensorRT version, GPU name, compute capability, precision) — see `tensorrt_cache`.
`tensorrt` and `cuda-python` are imported only when a real build or run happens, so importing this
module works everywhere. `RuntimeOptions.extra` carries the signed build settings
(`agent.staging.packages.runtime_extra`): "precision" (default fp16; int8 means an explicitly
quantized QDQ model), "min_batch" / "opt_batch" / "max_batch" for the one optimization profile of a
dynamic batch dimension (default 1 / max÷4 / 32), "workspace_mb" (default 1024).
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from agent.runtime import (
    InferenceError,
    ModelLoadError,
    RuntimeOptions,
    RuntimeUnavailableError,
    Session,
    TensorSpec,
)
from agent.runtime.tensorrt_cache import DeviceInfo, EngineBuilder, EngineCache

DEFAULT_WORKSPACE_BYTES = 1 << 30


def _import(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError as e:
        raise RuntimeUnavailableError(f"TensorRT backend needs {name!r}: {e}") from e


def _cudart() -> Any:
    try:
        return importlib.import_module("cuda.bindings.runtime")
    except ImportError:
        return _import("cuda.cudart")


def _cuda_call(result: Any) -> Any:
    """cuda-python returns (error, value...) tuples; raise on a non-zero error."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise InferenceError(f"CUDA call failed with error {int(err)} ({err})")
    return values[0] if len(values) == 1 else tuple(values)


class TensorRTBuilder:
    """The real EngineBuilder: tensorrt's OnnxParser + builder config, on GPU `device`."""

    def __init__(self, device: int = 0, workspace_bytes: int = DEFAULT_WORKSPACE_BYTES, max_batch: int = 32,
                 min_batch: int = 1, opt_batch: int | None = None) -> None:
        if not 1 <= min_batch <= (opt_batch or min_batch) <= max_batch:
            raise ValueError(f"batch profile must satisfy 1 <= min <= opt <= max, got {min_batch}/{opt_batch}/{max_batch}")
        self.device = device
        self.workspace_bytes = workspace_bytes
        self.max_batch = max_batch
        self.min_batch = min_batch
        self.opt_batch = opt_batch or max(min_batch, max_batch // 4)

    def device_info(self) -> DeviceInfo:
        trt = _import("tensorrt")
        cudart = _cudart()
        props = _cuda_call(cudart.cudaGetDeviceProperties(self.device))
        name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
        return DeviceInfo(str(trt.__version__), name.strip("\x00 "), f"{props.major}.{props.minor}")

    def build(self, onnx_path: Path, precision: str) -> bytes:
        trt = _import("tensorrt")
        logger = trt.Logger(trt.Logger.WARNING)
        builder = trt.Builder(logger)
        network = builder.create_network(0)
        parser = trt.OnnxParser(network, logger)
        if not parser.parse(onnx_path.read_bytes()):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise ModelLoadError(f"{onnx_path}: TensorRT cannot parse the model: {errors}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, self.workspace_bytes)
        if precision == "fp16":
            config.set_flag(trt.BuilderFlag.FP16)
        elif precision == "int8":
            config.set_flag(trt.BuilderFlag.INT8)
        profile = builder.create_optimization_profile()
        dynamic = False
        for i in range(network.num_inputs):
            tensor = network.get_input(i)
            shape = tuple(tensor.shape)
            if any(d < 0 for d in shape):
                dynamic = True
                low = tuple(self.min_batch if d < 0 else d for d in shape)
                opt = tuple(self.opt_batch if d < 0 else d for d in shape)
                high = tuple(self.max_batch if d < 0 else d for d in shape)
                profile.set_shape(tensor.name, low, opt, high)
        if dynamic:
            config.add_optimization_profile(profile)
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise ModelLoadError(f"{onnx_path}: TensorRT failed to build an engine ({precision})")
        return bytes(serialized)

    def load(self, engine_path: Path) -> TensorRTSession:
        trt = _import("tensorrt")
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        engine = runtime.deserialize_cuda_engine(engine_path.read_bytes())
        if engine is None:
            raise ModelLoadError(f"{engine_path}: TensorRT could not deserialize the engine")
        return TensorRTSession(engine, trt, _cudart(), engine_path)


def _datatype(np_dtype: Any) -> str:
    from agent.runtime import datatype_of

    return datatype_of(np_dtype)


class TensorRTSession:
    """One engine + execution context; buffers are allocated per call (simple, and safe for any shape)."""

    platform = "tensorrt_plan"

    def __init__(self, engine: Any, trt: Any, cudart: Any, path: Path) -> None:
        self._engine = engine
        self._trt = trt
        self._cudart = cudart
        self.path = path
        self._context = engine.create_execution_context()
        self._stream = _cuda_call(cudart.cudaStreamCreate())
        inputs: list[TensorSpec] = []
        outputs: list[TensorSpec] = []
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            spec = TensorSpec(name, _datatype(trt.nptype(engine.get_tensor_dtype(name))),
                              tuple(int(d) for d in engine.get_tensor_shape(name)))
            (inputs if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT else outputs).append(spec)
        self._inputs, self._outputs = tuple(inputs), tuple(outputs)

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        return self._inputs

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        return self._outputs

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        cudart = self._cudart
        h2d = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        d2h = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        allocations: list[Any] = []
        try:
            for spec in self._inputs:
                host = np.ascontiguousarray(feeds[spec.name], dtype=spec.dtype)
                self._context.set_input_shape(spec.name, host.shape)
                ptr = _cuda_call(cudart.cudaMalloc(max(1, host.nbytes)))
                allocations.append(ptr)
                _cuda_call(cudart.cudaMemcpy(ptr, host.ctypes.data, host.nbytes, h2d))
                self._context.set_tensor_address(spec.name, int(ptr))
            hosts: dict[str, np.ndarray] = {}
            for spec in self._outputs:
                shape = tuple(int(d) for d in self._context.get_tensor_shape(spec.name))
                host = np.empty(shape, dtype=spec.dtype)
                ptr = _cuda_call(cudart.cudaMalloc(max(1, host.nbytes)))
                allocations.append(ptr)
                self._context.set_tensor_address(spec.name, int(ptr))
                hosts[spec.name] = host
            if not self._context.execute_async_v3(self._stream):
                raise InferenceError(f"{self.path}: TensorRT execution failed")
            _cuda_call(cudart.cudaStreamSynchronize(self._stream))
            for host, ptr in zip(hosts.values(), allocations[len(self._inputs):], strict=True):
                _cuda_call(cudart.cudaMemcpy(host.ctypes.data, ptr, host.nbytes, d2h))
            return hosts
        except KeyError as e:
            raise InferenceError(f"{self.path}: missing input {e}") from e
        finally:
            for ptr in allocations:
                cudart.cudaFree(ptr)

    def close(self) -> None:
        self._context = None
        self._engine = None


class TensorRTLoader:
    """SessionLoader for TensorRT variants (ONNX files); builds and caches the engine on first use."""

    def __init__(self, builder: EngineBuilder | None = None, max_cached_engines: int = 8) -> None:
        self.builder = builder
        self.max_cached_engines = max_cached_engines
        self.last_build_was_cached: bool | None = None

    def load(self, path: Path, options: RuntimeOptions) -> Session:
        path = Path(path)
        if not path.is_file():
            raise ModelLoadError(f"{path}: model file not found")
        precision = options.extra.get("precision", "fp16")
        if precision not in ("fp32", "fp16", "int8"):
            raise ModelLoadError(f"{path}: unknown TensorRT precision {precision!r}")
        builder = self.builder
        if builder is None:
            device = int(options.device.split(":", 1)[1]) if options.device.startswith("cuda:") else 0
            try:
                builder = TensorRTBuilder(
                    device=device, max_batch=int(options.extra.get("max_batch", "32")),
                    min_batch=int(options.extra.get("min_batch", "1")),
                    opt_batch=int(options.extra["opt_batch"]) if "opt_batch" in options.extra else None,
                    workspace_bytes=int(options.extra.get("workspace_mb", "1024")) << 20)
            except ValueError as e:
                raise ModelLoadError(f"{path}: bad TensorRT build setting: {e}") from e
        cache = EngineCache(options.cache_dir or path.parent / "tensorrt-engines", self.max_cached_engines)
        engine_path, built = cache.get_or_build(path, builder, precision)
        self.last_build_was_cached = not built
        return builder.load(engine_path)
