"""The sample models are real classifiers, deterministic, and shaped the way the agent expects."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from controller.sample_models import GoldenSet, SampleModel, build_digits_cnn, train_digits_mlp


def _run(model: SampleModel, inputs: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(model.path), providers=["CPUExecutionProvider"])
    out: np.ndarray = session.run([model.output_name], {model.input_name: inputs})[0]
    return out


@pytest.mark.parametrize("fixture", ["digits_mlp", "digits_cnn"])
def test_digits_models_classify_held_out_digits(fixture: str, request: pytest.FixtureRequest) -> None:
    model: SampleModel = request.getfixturevalue(fixture)
    outputs = _run(model, model.golden.inputs)
    assert model.golden.accuracy(outputs) >= 0.95
    np.testing.assert_allclose(outputs, model.golden.reference_outputs, atol=1e-5)
    np.testing.assert_allclose(outputs.sum(axis=1), 1.0, atol=1e-4)
    # the golden set on disk is the one in memory
    on_disk = GoldenSet.load(model.golden_path)
    np.testing.assert_array_equal(on_disk.labels, model.golden.labels)
    assert len(set(on_disk.labels.tolist())) == 10


@pytest.mark.parametrize("fixture", ["digits_mlp", "digits_cnn", "mobilenet_like"])
def test_models_have_one_float_input_with_dynamic_batch_and_default_domain_ops(
    fixture: str, request: pytest.FixtureRequest
) -> None:
    model: SampleModel = request.getfixturevalue(fixture)
    proto = onnx.load(str(model.path))
    assert [i.name for i in proto.graph.input] == [model.input_name]
    assert [o.name for o in proto.graph.output] == [model.output_name]
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and not dims[0].HasField("dim_value")
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert {node.domain for node in proto.graph.node} <= {""}
    assert "ZipMap" not in {node.op_type for node in proto.graph.node}
    batch = np.concatenate([model.golden.inputs[:3]] * 2)
    assert _run(model, batch).shape[0] == 6


def test_builds_are_byte_for_byte_deterministic(digits_mlp: SampleModel, digits_cnn: SampleModel,
                                                tmp_path: Path) -> None:
    again_mlp = train_digits_mlp(tmp_path / "mlp")
    again_cnn = build_digits_cnn(tmp_path / "cnn")
    assert again_mlp.path.read_bytes() == digits_mlp.path.read_bytes()
    assert again_cnn.path.read_bytes() == digits_cnn.path.read_bytes()
    np.testing.assert_array_equal(again_cnn.golden.reference_outputs, digits_cnn.golden.reference_outputs)


def test_mobilenet_like_is_not_degenerate(mobilenet_like: SampleModel) -> None:
    outputs = _run(mobilenet_like, mobilenet_like.golden.inputs)
    assert outputs.shape == (8, 1000)
    assert np.all(np.isfinite(outputs))
    # random weights must still separate random inputs, or top-1 comparisons would be meaningless
    assert len(set(np.argmax(outputs, axis=1).tolist())) >= 2
    np.testing.assert_array_equal(np.argmax(outputs, axis=1), mobilenet_like.golden.labels)


def test_textdir_classifier_is_the_pinned_pretrained_model_and_reads_text_direction(
    textdir_classifier: SampleModel,
) -> None:
    import hashlib

    from tests.textdir import MODEL_SHA256

    assert hashlib.sha256(textdir_classifier.path.read_bytes()).hexdigest() == MODEL_SHA256
    golden = textdir_classifier.golden
    assert golden.inputs.shape == (64, 3, 48, 192)
    assert sorted(set(golden.labels.tolist())) == [0, 1]
    outputs = _run(textdir_classifier, golden.inputs)
    np.testing.assert_allclose(outputs, golden.reference_outputs, atol=1e-5)
    # a trained network on rendered text: well above chance, and not perfect by construction
    assert 0.85 <= golden.accuracy(outputs) <= 1.0
    flipped = np.ascontiguousarray(golden.inputs[:, :, ::-1, ::-1])
    # turning every line around swaps most answers (padding moves too, so not all)
    assert np.mean(np.argmax(_run(textdir_classifier, flipped), axis=1) != np.argmax(outputs, axis=1)) > 0.7


@pytest.mark.parametrize("fixture", ["digits_mlp", "digits_cnn", "mobilenet_like"])
def test_openvino_runs_the_models_and_agrees_on_top1(fixture: str, request: pytest.FixtureRequest) -> None:
    ov = pytest.importorskip("openvino", reason="needs openvino (the openvino extra)")
    model: SampleModel = request.getfixturevalue(fixture)
    core = ov.Core()
    reference = model.golden.reference_outputs
    # exact in f32; OpenVINO's own default may be bf16 on CPUs that support it, which must still agree
    exact = core.compile_model(str(model.path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    np.testing.assert_allclose(exact(model.golden.inputs)[0], reference, atol=1e-4)
    default = core.compile_model(str(model.path), "CPU")(model.golden.inputs)[0]
    assert np.mean(np.argmax(default, axis=1) == np.argmax(reference, axis=1)) >= 0.97
