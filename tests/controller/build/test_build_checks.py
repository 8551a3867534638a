"""check_release: every kind of bad upload is refused with its reason code, before anything is built."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import onnx
import pytest

from controller.build import BuildLimits, InvalidGoldenSet, InvalidModel, check_release
from controller.sample_models import SampleModel


def _npz(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)  # type: ignore[arg-type]
    return buffer.getvalue()


@pytest.fixture(scope="module")
def mlp_bytes(digits_mlp: SampleModel) -> bytes:
    return digits_mlp.path.read_bytes()


@pytest.fixture(scope="module")
def golden_bytes(digits_mlp: SampleModel) -> bytes:
    return digits_mlp.golden_path.read_bytes()


def test_good_release_fills_reference_outputs(digits_mlp: SampleModel, mlp_bytes: bytes) -> None:
    golden = digits_mlp.golden
    checked = check_release(mlp_bytes, _npz(inputs=golden.inputs, labels=golden.labels))
    assert checked.info.input.name == digits_mlp.input_name
    assert checked.info.input.batch_dynamic
    assert checked.info.num_classes == 10
    assert checked.golden.reference_outputs is not None
    np.testing.assert_allclose(checked.golden.reference_outputs, golden.reference_outputs, atol=1e-5)


@pytest.mark.parametrize(
    ("model", "reason"),
    [
        (b"this is not a model at all", "not_onnx"),
        (b"", "not_onnx"),
        (bytes(range(256)) * 8, "not_onnx"),
    ],
)
def test_not_onnx(model: bytes, reason: str, golden_bytes: bytes) -> None:
    with pytest.raises(InvalidModel) as caught:
        check_release(model, golden_bytes)
    assert caught.value.reason == reason


def test_model_over_limit(mlp_bytes: bytes, golden_bytes: bytes) -> None:
    with pytest.raises(InvalidModel) as caught:
        check_release(mlp_bytes, golden_bytes, limits=BuildLimits(max_model_bytes=len(mlp_bytes) - 1))
    assert caught.value.reason == "too_large"


def test_checker_failure(mlp_bytes: bytes, golden_bytes: bytes) -> None:
    model = onnx.load_model_from_string(mlp_bytes)
    model.graph.node[1].input[0] = "no_such_tensor"
    with pytest.raises(InvalidModel) as caught:
        check_release(model.SerializeToString(), golden_bytes)
    assert caught.value.reason == "checker_failed"


def test_custom_domain_refused(mlp_bytes: bytes, golden_bytes: bytes) -> None:
    model = onnx.load_model_from_string(mlp_bytes)
    model.opset_import.append(onnx.helper.make_opsetid("com.example.private", 1))
    with pytest.raises(InvalidModel) as caught:
        check_release(model.SerializeToString(), golden_bytes)
    assert caught.value.reason == "unsupported_domain"


def test_golden_not_npz(mlp_bytes: bytes) -> None:
    with pytest.raises(InvalidGoldenSet) as caught:
        check_release(mlp_bytes, b"inputs,labels\n1,2\n")
    assert caught.value.reason == "not_npz"


def test_golden_zip_bomb_refused_before_inflating(mlp_bytes: bytes) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("inputs.npy", b"\0" * (8 * 1024 * 1024))
    with pytest.raises(InvalidGoldenSet) as caught:
        check_release(mlp_bytes, buffer.getvalue(), limits=BuildLimits(max_golden_uncompressed_bytes=1024 * 1024))
    assert caught.value.reason == "too_large"


def test_golden_pickles_refused(mlp_bytes: bytes) -> None:
    data = _npz(inputs=np.array([{"evil": 1}], dtype=object), labels=np.array([1]))
    with pytest.raises(InvalidGoldenSet) as caught:
        check_release(mlp_bytes, data)
    assert caught.value.reason == "not_npz"


@pytest.mark.parametrize(
    ("arrays", "reason"),
    [
        ({"labels": np.zeros(3, dtype=np.int64)}, "missing_array"),
        ({"inputs": np.zeros((3, 64), np.float32)}, "missing_array"),
        ({"inputs": np.zeros((0, 64), np.float32), "labels": np.zeros(0, np.int64)}, "empty"),
        ({"inputs": np.zeros((3, 63), np.float32), "labels": np.zeros(3, np.int64)}, "shape_mismatch"),
        ({"inputs": np.zeros((3, 8, 8), np.float32), "labels": np.zeros(3, np.int64)}, "shape_mismatch"),
        ({"inputs": np.zeros((3, 64), np.float32), "labels": np.zeros(4, np.int64)}, "shape_mismatch"),
        ({"inputs": np.zeros((3, 64), np.int32), "labels": np.zeros(3, np.int64)}, "wrong_dtype"),
        ({"inputs": np.full((3, 64), np.nan, np.float32), "labels": np.zeros(3, np.int64)}, "non_finite"),
        ({"inputs": np.zeros((3, 64), np.float32), "labels": np.array([0, 1, 10])}, "bad_labels"),
        ({"inputs": np.zeros((3, 64), np.float32), "labels": np.array([0.5, 1, 2])}, "bad_labels"),
        ({"inputs": np.zeros((3, 64), np.float32), "reference_outputs": np.zeros((3, 7), np.float32)},
         "shape_mismatch"),
    ],
)
def test_golden_mismatches(mlp_bytes: bytes, arrays: dict[str, np.ndarray], reason: str) -> None:
    with pytest.raises(InvalidGoldenSet) as caught:
        check_release(mlp_bytes, _npz(**arrays))
    assert caught.value.reason == reason


def test_golden_too_many_samples(mlp_bytes: bytes, golden_bytes: bytes) -> None:
    with pytest.raises(InvalidGoldenSet) as caught:
        check_release(mlp_bytes, golden_bytes, limits=BuildLimits(max_golden_samples=10))
    assert caught.value.reason == "too_many_samples"


def test_golden_of_another_model(mlp_bytes: bytes, digits_mlp: SampleModel) -> None:
    """Reference outputs that the uploaded model does not reproduce: the golden set belongs elsewhere."""
    golden = digits_mlp.golden
    shuffled = np.roll(golden.reference_outputs, 1, axis=1)
    with pytest.raises(InvalidGoldenSet) as caught:
        check_release(mlp_bytes, _npz(inputs=golden.inputs, labels=golden.labels, reference_outputs=shuffled))
    assert caught.value.reason == "reference_mismatch"


def test_float64_inputs_are_cast(mlp_bytes: bytes, digits_mlp: SampleModel) -> None:
    golden = digits_mlp.golden
    checked = check_release(mlp_bytes, _npz(inputs=golden.inputs.astype(np.float64), labels=golden.labels))
    assert checked.golden.inputs.dtype == np.float32


def test_probe_checks_only_the_first_samples(mlp_bytes: bytes, digits_mlp: SampleModel) -> None:
    """The request-time probe sees only the first rows: a mismatch there is caught, later rows are not run."""
    golden = digits_mlp.golden
    reference = golden.reference_outputs.copy()
    reference[100:] = np.roll(reference[100:], 1, axis=1)  # wrong only after row 100
    data = _npz(inputs=golden.inputs, labels=golden.labels, reference_outputs=reference)
    probed = check_release(mlp_bytes, data, probe_samples=32)
    assert len(probed.golden) == 32
    with pytest.raises(InvalidGoldenSet) as caught:
        check_release(mlp_bytes, data)
    assert caught.value.reason == "reference_mismatch"
    early = golden.reference_outputs.copy()
    early[:32] = np.roll(early[:32], 1, axis=1)
    with pytest.raises(InvalidGoldenSet):
        check_release(mlp_bytes, _npz(inputs=golden.inputs, labels=golden.labels, reference_outputs=early),
                      probe_samples=32)
