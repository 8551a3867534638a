"""Runtime loaders: ONNX Runtime and OpenVINO describe and run the same real models the same way,
and refuse what they cannot load with ModelLoadError."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from agent.runtime import (
    InferenceError,
    ModelLoadError,
    RuntimeOptions,
    RuntimeUnavailableError,
    TensorSpec,
    available_runtimes,
    loader_for,
)
from controller.sample_models import SampleModel


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
@pytest.mark.parametrize("fixture", ["digits_mlp", "digits_cnn"])
def test_loaders_agree_with_the_reference_outputs(runtime: str, fixture: str,
                                                  request: pytest.FixtureRequest) -> None:
    if runtime not in available_runtimes():
        pytest.skip(f"needs the {runtime} package")
    model: SampleModel = request.getfixturevalue(fixture)
    session = loader_for(runtime).load(model.path, RuntimeOptions(intra_op_threads=1))
    try:
        assert [s.name for s in session.inputs] == [model.input_name]
        assert session.inputs[0].datatype == "FP32" and session.inputs[0].batched
        assert session.outputs[0] == TensorSpec(model.output_name, "FP32", (-1, 10))
        out = session.run({model.input_name: model.golden.inputs})[model.output_name]
        np.testing.assert_allclose(out, model.golden.reference_outputs, rtol=1e-4, atol=1e-5)
        with pytest.raises(InferenceError):
            session.run({model.input_name: np.zeros((1, 3), np.float32)})
    finally:
        session.close()
    with pytest.raises(InferenceError, match="closed"):
        session.run({model.input_name: model.golden.inputs[:1]})


def test_openvino_reads_an_ir_folder(digits_cnn: SampleModel, tmp_path: Path) -> None:
    ov = pytest.importorskip("openvino", reason="needs the openvino package")
    folder = tmp_path / "ir"
    folder.mkdir()
    ov.save_model(ov.Core().read_model(str(digits_cnn.path)), str(folder / "model.xml"), compress_to_fp16=False)
    session = loader_for("openvino").load(folder, RuntimeOptions(intra_op_threads=1, cache_dir=tmp_path / "c"))
    out = session.run({digits_cnn.input_name: digits_cnn.golden.inputs})[digits_cnn.output_name]
    np.testing.assert_allclose(out, digits_cnn.golden.reference_outputs, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_garbage_files_raise_model_load_error(runtime: str, tmp_path: Path) -> None:
    if runtime not in available_runtimes():
        pytest.skip(f"needs the {runtime} package")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07 definitely not a model" * 10)
    with pytest.raises(ModelLoadError, match="bad.onnx"):
        loader_for(runtime).load(bad, RuntimeOptions())
    with pytest.raises(ModelLoadError, match="not found"):
        loader_for(runtime).load(tmp_path / "missing.onnx", RuntimeOptions())


def test_unknown_runtimes_and_bad_options() -> None:
    with pytest.raises(RuntimeUnavailableError, match="unknown runtime 'tflite'"):
        loader_for("tflite")
    with pytest.raises(ValueError, match="intra_op_threads"):
        RuntimeOptions(intra_op_threads=0).resolved_intra_op_threads()
    assert RuntimeOptions().resolved_intra_op_threads() >= 1


def test_onnxruntime_refuses_unknown_providers(digits_mlp: SampleModel) -> None:
    with pytest.raises(ModelLoadError, match="NoSuchExecutionProvider"):
        loader_for("onnxruntime").load(digits_mlp.path, RuntimeOptions(providers=("NoSuchExecutionProvider",)))
