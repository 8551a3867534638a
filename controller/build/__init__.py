"""The variant build pipeline: from one uploaded ONNX model and its golden set to the compiled, measured
variants a release offers to devices (see `pipeline.py` for the flow, README.md for the formats).

Errors (errors.py):

    BuildError
    ├── InvalidModel         bad upload → 4xx (reason codes: not_onnx, too_large, checker_failed, ...)
    ├── InvalidGoldenSet     bad / mismatched golden set → 4xx
    └── VariantBuildError    one variant failed; recorded on that variant, never stops the build
"""

from __future__ import annotations

from controller.build.errors import BuildError, InvalidGoldenSet, InvalidModel, VariantBuildError
from controller.build.evaluate import Evaluation
from controller.build.golden import GoldenSet
from controller.build.model_check import ModelInfo, TensorInfo
from controller.build.pipeline import (
    ALL_VARIANTS,
    BuildLimits,
    BuildOptions,
    BuildProgress,
    BuildReport,
    BuiltVariant,
    CheckedRelease,
    build_variants,
    check_release,
)
from controller.build.tensorrt_variant import TensorRTSettings

__all__ = [
    "ALL_VARIANTS",
    "BuildError",
    "BuildLimits",
    "BuildOptions",
    "BuildProgress",
    "BuildReport",
    "BuiltVariant",
    "CheckedRelease",
    "Evaluation",
    "GoldenSet",
    "InvalidGoldenSet",
    "InvalidModel",
    "ModelInfo",
    "TensorInfo",
    "TensorRTSettings",
    "VariantBuildError",
    "build_variants",
    "check_release",
]
