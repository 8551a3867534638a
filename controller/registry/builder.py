"""The registry's port to the variant build pipeline (`controller.build`), and the adapter to it.

The registry needs two things from a builder: a quick `validate` it can run inside the upload request
(so bad input is a 4xx and nothing gets registered), and a `build` it runs in the background with a
progress callback. `BuiltVariant` is what the registry records and signs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from controller.errors import Unavailable

Progress = Callable[[float, str], None]


@dataclass(frozen=True)
class BuiltVariant:
    variant_id: str  # last part of the target name, e.g. "onnxruntime-fp32.onnx"
    runtime: str  # onnxruntime | openvino | tensorrt
    precision: str  # fp32 | fp16 | int8
    data: bytes
    accuracy: float | None = None
    agreement: float | None = None
    latency_ms: float | None = None
    offered: bool = True  # the builder's own verdict (e.g. it failed to evaluate)
    note: str = ""
    custom: Mapping[str, Any] = field(default_factory=dict)


class VariantBuilder(Protocol):
    def validate(self, model_bytes: bytes, golden_bytes: bytes) -> None:
        """Raise `InvalidInput` unless the model is a loadable ONNX model that matches the golden set."""
        ...

    def build(self, model_bytes: bytes, golden_bytes: bytes, progress: Progress) -> list[BuiltVariant]: ...


def default_builder() -> VariantBuilder:
    """The build pipeline of `controller.build`; Unavailable when it is not installed."""
    try:
        from controller.registry.pipeline import PipelineBuilder
    except ImportError as e:
        raise Unavailable(f"the variant build pipeline is not available: {e}") from e
    return PipelineBuilder()
