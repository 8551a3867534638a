"""The build pipeline's error tree.

    BuildError                     root; never raised itself
    ├── InvalidModel               the upload is not a usable ONNX model (a 4xx; retry cannot help)
    ├── InvalidGoldenSet           the golden set is malformed or does not fit the model (a 4xx)
    └── VariantBuildError          one variant could not be built or evaluated; the pipeline records it
                                   on that variant (status "failed") and carries on with the others

Every error has a `reason` code (stable, for the API and tests) and a message that says what was
expected and what arrived.
"""

from __future__ import annotations


class BuildError(Exception):
    retryable = False

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message

    def __str__(self) -> str:
        return f"{self.reason}: {self.message}"


class InvalidModel(BuildError):
    """Reasons: too_large, not_onnx, external_data, checker_failed, unsupported_opset,
    unsupported_domain, unsupported_inputs, unsupported_outputs, does_not_load."""


class InvalidGoldenSet(BuildError):
    """Reasons: too_large, not_npz, missing_array, empty, too_many_samples, wrong_dtype, shape_mismatch,
    non_finite, bad_labels, reference_mismatch."""


class VariantBuildError(BuildError):
    """Reasons: conversion_failed, quantization_failed, evaluation_failed, runtime_missing."""
