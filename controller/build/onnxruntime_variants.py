"""ONNX Runtime variants: fp32 graph-optimized, and int8.

fp32: the model after ONNX Runtime's *basic* graph optimizations (constant folding, redundant-node
elimination), saved offline. Basic rewrites stay inside the standard ONNX operator set, so the file runs
on any execution provider and any ONNX Runtime that supports its opset; the extended and layout levels
emit `com.microsoft` fused operators tied to the CPU provider and the build host's ONNX Runtime version,
and every device applies those itself at load time anyway.

int8, chosen per model (`method="auto"`):
- networks with convolutions: static QDQ, per-channel int8 weights and uint8 activations, calibrated
  (MinMax) on golden inputs after `quant_pre_process` (with `skip_symbolic_shape=True`, which otherwise
  needs sympy). Dynamic quantization of convolutions becomes ConvInteger, which runs several times
  slower than fp32 on common CPUs;
- MatMul-dominated networks (no convolution): dynamic quantization (int8 weights, activations quantized
  per call), which needs no calibration and suits MLPs and transformers.
Whether int8 is actually faster or accurate enough depends on the device (VNNI, dotprod): the build
records what it measured here, and each device's gate decides for itself.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx

from controller.build.errors import VariantBuildError

CALIBRATION_BATCH = 16
#: Per-channel QDQ needs DequantizeLinear's `axis` attribute, which arrived in opset 13.
MIN_QDQ_OPSET = 13


def optimize_fp32(model_bytes: bytes, workdir: Path) -> bytes:
    """The model after ONNX Runtime's basic, provider-independent graph optimizations."""
    import onnxruntime as ort

    out = workdir / "onnxruntime-fp32.onnx"
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(out)
    options.log_severity_level = 3
    try:
        ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
        data = out.read_bytes()
        onnx.checker.check_model(onnx.load_model_from_string(data))
    except Exception as e:  # onnxruntime raises its own untyped exceptions
        raise VariantBuildError("conversion_failed", f"ONNX Runtime graph optimization failed: {e}") from e
    return data


def calibration_inputs(inputs: np.ndarray, *, max_samples: int) -> np.ndarray:
    """An evenly spread, deterministic subset of the golden inputs for calibration."""
    if inputs.shape[0] <= max_samples:
        return inputs
    index = np.linspace(0, inputs.shape[0] - 1, max_samples).round().astype(int)
    subset: np.ndarray = inputs[index]
    return subset


class _GoldenReader:
    """onnxruntime.quantization.CalibrationDataReader over golden inputs (structural: ORT only calls
    get_next)."""

    def __init__(self, input_name: str, inputs: np.ndarray, batch: int) -> None:
        self._batches = iter([{input_name: inputs[i : i + batch]} for i in range(0, inputs.shape[0], batch)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)

    def __iter__(self) -> _GoldenReader:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        item = self.get_next()
        if item is None:
            raise StopIteration
        return item


def _at_least_opset(model_bytes: bytes, opset: int) -> bytes | None:
    """The model converted to `opset` when its default-domain opset is older, else None."""
    from onnx import version_converter

    model = onnx.load_model_from_string(model_bytes)
    current = max((e.version for e in model.opset_import if e.domain in ("", "ai.onnx")), default=opset)
    if current >= opset:
        return None
    converted = version_converter.convert_version(model, opset)
    onnx.checker.check_model(converted)
    data: bytes = converted.SerializeToString()
    return data


def choose_int8_method(method: str, *, has_conv: bool) -> str:
    if method == "auto":
        return "static" if has_conv else "dynamic"
    if method not in ("static", "dynamic"):
        raise ValueError(f"int8 method must be auto, static or dynamic, got {method!r}")
    return method


def quantize_int8(model_bytes: bytes, workdir: Path, *, method: str, input_name: str,
                  calibration: np.ndarray, dynamic_batch: bool) -> tuple[bytes, dict[str, str | int]]:
    """(int8 model bytes, details recorded on the variant). `method` is "static" or "dynamic"."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    source = workdir / "int8-source.onnx"
    source.write_bytes(model_bytes)
    out = workdir / "onnxruntime-int8.onnx"
    # The quantizer logs advice at WARNING through the root logger; keep build logs readable.
    quiet = logging.getLogger().level
    logging.getLogger().setLevel(logging.ERROR)
    try:
        if method == "dynamic":
            quantize_dynamic(source, out, weight_type=QuantType.QInt8)
            details: dict[str, str | int] = {"quantization": "dynamic", "weight_type": "int8"}
        else:
            prepared = workdir / "int8-prepared.onnx"
            upgraded = _at_least_opset(model_bytes, MIN_QDQ_OPSET)
            if upgraded is not None:
                source.write_bytes(upgraded)
            quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
            batch = CALIBRATION_BATCH if dynamic_batch else 1
            per_channel = True
            try:
                quantize_static(prepared, out, _GoldenReader(input_name, calibration, batch),
                                quant_format=QuantFormat.QDQ, per_channel=True,
                                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
            except ValueError:
                # onnxruntime's bias-scale adjustment fails on per-channel MatMul+Add (Gemm) weights in
                # some releases; per-tensor weights are the documented fallback.
                per_channel = False
                quantize_static(prepared, out, _GoldenReader(input_name, calibration, batch),
                                quant_format=QuantFormat.QDQ, per_channel=False,
                                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
            details = {"quantization": "static-qdq", "calibration": "minmax",
                       "calibration_samples": int(calibration.shape[0]),
                       "weight_granularity": "per-channel" if per_channel else "per-tensor"}
        data = out.read_bytes()
        onnx.checker.check_model(onnx.load_model_from_string(data))
    except VariantBuildError:
        raise
    except Exception as e:  # the quantization tool raises anything from ValueError to protobuf errors
        raise VariantBuildError("quantization_failed", f"{method} int8 quantization failed: {e}") from e
    finally:
        logging.getLogger().setLevel(quiet)
    return data, details
