"""The golden set: the inputs a release is judged on, with labels and/or the reference outputs.

Wire format: an `.npz` (numpy zip, no pickles) with arrays

| array               | shape                      | required                                           |
|---------------------|----------------------------|----------------------------------------------------|
| `inputs`            | [N, ...model input dims]   | yes; dtype of the model input (floats are cast)    |
| `labels`            | [N] integers in [0, classes) | one of labels / reference_outputs                |
| `reference_outputs` | [N, ...first output dims]  | computed from the uploaded model when missing      |

Parsing is bounded: the zip's declared uncompressed size is checked before anything is inflated (a
zip bomb never reaches memory), and `N` is capped. The same set, normalised (reference outputs always
present), is published as the release's `golden.npz` target so devices gate on exactly what the build
measured.
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass

import numpy as np

from controller.build.errors import InvalidGoldenSet
from controller.build.model_check import ModelInfo

ARRAYS = ("inputs", "labels", "reference_outputs")


@dataclass(frozen=True)
class GoldenSet:
    inputs: np.ndarray
    labels: np.ndarray | None
    reference_outputs: np.ndarray | None

    def __len__(self) -> int:
        return int(self.inputs.shape[0])

    def with_reference(self, reference_outputs: np.ndarray) -> GoldenSet:
        return GoldenSet(self.inputs, self.labels, reference_outputs)

    def to_npz_bytes(self) -> bytes:
        arrays = {"inputs": self.inputs}
        if self.labels is not None:
            arrays["labels"] = self.labels
        if self.reference_outputs is not None:
            arrays["reference_outputs"] = self.reference_outputs
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)  # type: ignore[arg-type]
        return buffer.getvalue()


def parse_golden(data: bytes, *, max_bytes: int, max_uncompressed_bytes: int, max_samples: int) -> GoldenSet:
    """Parse an uploaded golden set without trusting it; raise `InvalidGoldenSet` with a reason."""
    if len(data) > max_bytes:
        raise InvalidGoldenSet("too_large", f"golden set is {len(data)} bytes, the limit is {max_bytes}")
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            declared = sum(info.file_size for info in archive.infolist())
    except zipfile.BadZipFile as e:
        raise InvalidGoldenSet("not_npz", f"golden set is not an .npz (zip) file: {e}") from e
    if declared > max_uncompressed_bytes:
        raise InvalidGoldenSet("too_large", f"golden set inflates to {declared} bytes, "
                                            f"the limit is {max_uncompressed_bytes}")
    arrays: dict[str, np.ndarray] = {}
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            for name in ARRAYS:
                if name in npz.files:
                    arrays[name] = np.asarray(npz[name])
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as e:
        raise InvalidGoldenSet("not_npz", f"golden set arrays cannot be read (pickled objects are refused): {e}") from e
    if "inputs" not in arrays:
        raise InvalidGoldenSet("missing_array", f"golden set has no 'inputs' array; expected arrays {ARRAYS}")
    if "labels" not in arrays and "reference_outputs" not in arrays:
        raise InvalidGoldenSet("missing_array", "golden set needs 'labels' or 'reference_outputs' (or both)")
    inputs = arrays["inputs"]
    if inputs.ndim == 0 or inputs.shape[0] == 0:
        raise InvalidGoldenSet("empty", "golden set 'inputs' holds no samples")
    n = int(inputs.shape[0])
    if n > max_samples:
        raise InvalidGoldenSet("too_many_samples", f"golden set has {n} samples, the limit is {max_samples}")
    for name, array in arrays.items():
        if array.dtype.kind not in "biuf":
            raise InvalidGoldenSet("wrong_dtype", f"golden '{name}' has dtype {array.dtype}, expected numbers")
        if array.ndim == 0 or array.shape[0] != n:
            raise InvalidGoldenSet("shape_mismatch", f"golden '{name}' has shape {array.shape}, "
                                                     f"expected {n} rows like 'inputs'")
        if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
            raise InvalidGoldenSet("non_finite", f"golden '{name}' holds NaN or Inf")
    labels = arrays.get("labels")
    if labels is not None:
        if labels.ndim != 1 or labels.dtype.kind not in "iu":
            raise InvalidGoldenSet("bad_labels", f"golden 'labels' must be a 1-D integer array, got "
                                                 f"{labels.dtype} {labels.shape}")
        if np.any(labels < 0):
            raise InvalidGoldenSet("bad_labels", "golden 'labels' holds negative class ids")
        labels = labels.astype(np.int64)
    return GoldenSet(inputs, labels, arrays.get("reference_outputs"))


def fit_to_model(golden: GoldenSet, info: ModelInfo) -> GoldenSet:
    """The golden set cast to the model's input dtype, after checking it fits the model's input and
    output shapes; raise `InvalidGoldenSet` otherwise."""
    spec = info.input
    inputs = golden.inputs
    if inputs.ndim != len(spec.shape):
        raise InvalidGoldenSet("shape_mismatch", f"golden inputs have shape {inputs.shape} (rank {inputs.ndim}); "
                                                 f"model input {spec.name!r} is {spec.shape} (rank {len(spec.shape)})")
    for axis, size in spec.static_dims().items():
        if axis == 0:
            continue  # the batch axis is the sample axis of the golden set
        if inputs.shape[axis] != size:
            raise InvalidGoldenSet("shape_mismatch", f"golden inputs have shape {inputs.shape}; model input "
                                                     f"{spec.name!r} needs {size} on axis {axis} ({spec.shape})")
    if inputs.dtype != spec.dtype:
        if inputs.dtype.kind == "f" and spec.dtype.kind == "f":
            inputs = inputs.astype(spec.dtype)
        else:
            raise InvalidGoldenSet("wrong_dtype", f"golden inputs are {inputs.dtype}; model input {spec.name!r} "
                                                  f"is {spec.dtype}")
    classes = info.num_classes
    if golden.labels is not None and classes is not None and int(golden.labels.max()) >= classes:
        raise InvalidGoldenSet("bad_labels", f"golden labels go up to {int(golden.labels.max())}; the model "
                                             f"outputs {classes} classes")
    reference = golden.reference_outputs
    if reference is not None:
        expected = info.outputs[0].shape
        if reference.ndim != len(expected) or any(
            isinstance(d, int) and d > 0 and reference.shape[axis] != d for axis, d in enumerate(expected) if axis
        ):
            raise InvalidGoldenSet("shape_mismatch", f"golden reference_outputs have shape {reference.shape}; "
                                                     f"the model's first output is {expected}")
    return GoldenSet(inputs, golden.labels, reference)
