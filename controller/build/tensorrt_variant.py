"""The TensorRT variant: the ONNX model plus the settings a device builds its engine with.

A TensorRT engine is specific to the GPU model and the TensorRT version, so the controller cannot
compile it; the device builds it on first install and caches it per (GPU, TensorRT version). The signed
artifact is therefore the checked, unmodified ONNX file (TensorRT does its own fusions), and the build
settings travel as flat `trt_*` custom fields of the target, signed with it:

| field              | meaning                                                      |
|--------------------|--------------------------------------------------------------|
| trt_precision      | "fp16": allow fp16 kernels (fp32 fallback per layer)         |
| trt_workspace_mb   | builder workspace limit                                      |
| trt_min_batch / trt_opt_batch / trt_max_batch | optimization profile of the batch axis (dynamic batch only) |
| trt_input_name     | the input the profile applies to                             |
| trt_input_shape    | the input shape without the batch axis                       |

No accuracy is measured here (no engine exists on the build host); the variant is marked
`evaluated: false` and each device's gate measures it against the golden set before it serves.
"""

from __future__ import annotations

from dataclasses import dataclass

from controller.build.model_check import ModelInfo


@dataclass(frozen=True)
class TensorRTSettings:
    precision: str = "fp16"
    workspace_mb: int = 1024
    min_batch: int = 1
    opt_batch: int = 1
    max_batch: int = 8


def tensorrt_custom(info: ModelInfo, settings: TensorRTSettings) -> dict[str, str | int | list[int]]:
    """The `trt_*` custom fields for a model (flat scalars and lists, as target custom fields must be)."""
    if settings.precision not in ("fp32", "fp16", "int8"):
        raise ValueError(f"TensorRT precision must be fp32, fp16 or int8, got {settings.precision!r}")
    if not 1 <= settings.min_batch <= settings.opt_batch <= settings.max_batch:
        raise ValueError("TensorRT batch profile must satisfy 1 <= min <= opt <= max")
    shape = [d if isinstance(d, int) and d > 0 else -1 for d in info.input.shape[1:]]
    fields: dict[str, str | int | list[int]] = {
        "trt_precision": settings.precision,
        "trt_workspace_mb": settings.workspace_mb,
        "trt_input_name": info.input.name,
        "trt_input_shape": shape,
    }
    if info.input.batch_dynamic:
        fields.update(trt_min_batch=settings.min_batch, trt_opt_batch=settings.opt_batch,
                      trt_max_batch=settings.max_batch)
    else:
        static = info.input.shape[0]
        fields.update(trt_min_batch=static, trt_opt_batch=static, trt_max_batch=static)  # type: ignore[arg-type]
    return fields
