"""Checking an uploaded ONNX model before anything is registered, and describing it for the pipeline.

What we accept, and why:
- at most `max_model_bytes`, one self-contained protobuf (no external data: the upload is the whole
  model, and devices get exactly the bytes that were signed);
- `onnx.checker.check_model(full_check=True)` passes (structure and shape inference);
- the default-domain opset is within [MIN_OPSET, the newest this onnx knows]; only the `ai.onnx` and
  `ai.onnx.ml` domains (a custom-op model would fail on devices whose runtime lacks the op);
- exactly one graph input that is not an initializer (the golden set has one `inputs` array), a tensor;
- at least one output; the first one is what accuracy is measured on.

Deliberately not here: loading the model in a runtime (the pipeline does that with the golden set).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import helper

from controller.build.errors import InvalidModel

MIN_OPSET = 11
ALLOWED_DOMAINS = ("", "ai.onnx", "ai.onnx.ml")


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: np.dtype[Any]
    shape: tuple[int | str | None, ...]  # int: static; str: symbolic; None: unknown

    @property
    def batch_dynamic(self) -> bool:
        return len(self.shape) > 0 and not isinstance(self.shape[0], int)

    def static_dims(self) -> dict[int, int]:
        return {i: d for i, d in enumerate(self.shape) if isinstance(d, int) and d > 0}


@dataclass(frozen=True)
class ModelInfo:
    opset: int
    ir_version: int
    producer: str
    input: TensorInfo
    outputs: tuple[TensorInfo, ...]
    op_counts: Mapping[str, int]

    @property
    def has_conv(self) -> bool:
        return any(op in self.op_counts for op in ("Conv", "ConvTranspose"))

    @property
    def num_classes(self) -> int | None:
        """Width of the first output when it is [batch, classes] with a static class count."""
        shape = self.outputs[0].shape
        if len(shape) == 2 and isinstance(shape[1], int) and shape[1] > 0:
            return shape[1]
        return None


def _tensor_info(value: onnx.ValueInfoProto) -> TensorInfo:
    kind = value.type.WhichOneof("value")
    if kind != "tensor_type":
        raise InvalidModel("unsupported_inputs", f"{value.name!r} is a {kind}, expected a tensor")
    elem = value.type.tensor_type.elem_type
    try:
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(elem))
    except (KeyError, TypeError, ValueError) as e:
        raise InvalidModel("unsupported_inputs", f"{value.name!r} has element type {elem}, not a numpy type") from e
    dims: list[int | str | None] = []
    for dim in value.type.tensor_type.shape.dim:
        if dim.HasField("dim_value"):
            dims.append(int(dim.dim_value))
        elif dim.HasField("dim_param"):
            dims.append(dim.dim_param)
        else:
            dims.append(None)
    return TensorInfo(value.name, dtype, tuple(dims))


def load_model(model_bytes: bytes, *, max_model_bytes: int) -> onnx.ModelProto:
    """Parse and check `model_bytes`; raise `InvalidModel` with a reason otherwise."""
    if len(model_bytes) > max_model_bytes:
        raise InvalidModel("too_large", f"model is {len(model_bytes)} bytes, the limit is {max_model_bytes}")
    try:
        model = onnx.load_model_from_string(model_bytes)
    except (DecodeError, ValueError, RuntimeError) as e:
        raise InvalidModel("not_onnx", f"upload is not an ONNX protobuf: {e}") from e
    # Arbitrary bytes sometimes parse as an (empty) protobuf message: demand an actual graph.
    if model.ir_version <= 0 or not model.graph.node:
        raise InvalidModel("not_onnx", "upload parsed as protobuf but holds no ONNX graph (no IR version or no nodes)")
    for tensor in model.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            raise InvalidModel("external_data", f"initializer {tensor.name!r} uses external data; upload one self-contained file")
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise InvalidModel("checker_failed", f"onnx.checker refused the model: {str(e).splitlines()[0][:300]}") from e
    return model


def describe_model(model: onnx.ModelProto) -> ModelInfo:
    """What the pipeline needs to know about a checked model; refuses shapes it cannot build for."""
    opset = 0
    for entry in model.opset_import:
        if entry.domain not in ALLOWED_DOMAINS:
            raise InvalidModel("unsupported_domain", f"operator domain {entry.domain!r} is not supported on devices; "
                                                     f"expected one of {ALLOWED_DOMAINS}")
        if entry.domain in ("", "ai.onnx"):
            opset = int(entry.version)
    newest = onnx.defs.onnx_opset_version()
    if not MIN_OPSET <= opset <= newest:
        raise InvalidModel("unsupported_opset", f"default-domain opset is {opset}, expected {MIN_OPSET}..{newest}")
    initializers = {t.name for t in model.graph.initializer}
    inputs = [v for v in model.graph.input if v.name not in initializers]
    if len(inputs) != 1:
        raise InvalidModel("unsupported_inputs", f"model has {len(inputs)} inputs ({[v.name for v in inputs]}), "
                                                 "expected exactly 1")
    if not model.graph.output:
        raise InvalidModel("unsupported_outputs", "model has no outputs")
    outputs = tuple(_tensor_info(v) for v in model.graph.output)
    ops = Counter(node.op_type for node in model.graph.node)
    return ModelInfo(opset, int(model.ir_version), model.producer_name, _tensor_info(inputs[0]), outputs, dict(ops))


# Oldest ONNX Runtime release that implements each default-domain opset (from ORT's compatibility table).
# A variant records this as its `runtime_version` so selection refuses devices whose runtime is too old,
# instead of the build host's own (newer) version, which would lock out devices for no reason.
_ORT_FOR_OPSET = {11: "1.1", 12: "1.3", 13: "1.6", 14: "1.7", 15: "1.10", 16: "1.11", 17: "1.12", 18: "1.14",
                  19: "1.16", 20: "1.17", 21: "1.18", 22: "1.20", 23: "1.22"}


def min_onnxruntime_for(opset: int) -> str | None:
    """Oldest ONNX Runtime able to run a model of this opset, or None when unknown (newer than the table)."""
    return _ORT_FOR_OPSET.get(opset)
