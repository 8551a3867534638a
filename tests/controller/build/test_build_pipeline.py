"""build_variants on real models: every variant built, stored, measured, and the figures are true."""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from controller.artifacts import LocalArtifactStore
from controller.build import ALL_VARIANTS, BuildOptions, BuildProgress, BuildReport, build_variants
from controller.build.model_check import min_onnxruntime_for
from controller.build.openvino_ir import openvino_runner, unpack_ir
from controller.sample_models import SampleModel, portable_model
from manifests.custom_fields import check_custom

FAST = BuildOptions(latency_runs=5)


def _ort_outputs(model_bytes: bytes, inputs: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    out: np.ndarray = session.run(None, {session.get_inputs()[0].name: inputs})[0]
    return out


def _build(sample: SampleModel, store: LocalArtifactStore, options: BuildOptions = FAST,
           events: list[BuildProgress] | None = None, name: str = "digits") -> BuildReport:
    return build_variants(sample.path.read_bytes(), sample.golden_path.read_bytes(), store,
                          events.append if events is not None else None, model=name, version="1.0.0",
                          release_counter=3, options=options)


@pytest.fixture(scope="module")
def cnn_build(digits_cnn: SampleModel, tmp_path_factory: pytest.TempPathFactory
              ) -> tuple[BuildReport, LocalArtifactStore, list[BuildProgress]]:
    store = LocalArtifactStore(tmp_path_factory.mktemp("store"))
    events: list[BuildProgress] = []
    return _build(digits_cnn, store, events=events), store, events


def test_every_variant_built_and_stored(cnn_build: tuple[BuildReport, LocalArtifactStore, list[BuildProgress]]
                                        ) -> None:
    report, store, _ = cnn_build
    assert [v.variant_id for v in report.variants] == list(ALL_VARIANTS)
    for variant in report.variants:
        assert variant.status in ("ready", "unverified"), (variant.variant_id, variant.reason)
        assert variant.key is not None
        data = store.read_bytes(variant.key)
        assert len(data) == variant.length
        assert hashlib.sha256(data).hexdigest() == variant.sha256
        assert variant.target_name.startswith("models/digits/1.0.0/")
        check_custom(variant.target_name, variant.custom)  # what the image repository will sign
        assert variant.custom["release_counter"] == 3
    golden = np.load(io.BytesIO(store.read_bytes(report.golden_key)))
    assert set(golden.files) == {"inputs", "labels", "reference_outputs"}
    check_custom(report.golden_target_name, report.golden_custom)


def test_recorded_figures_match_an_independent_measurement(
        digits_cnn: SampleModel, cnn_build: tuple[BuildReport, LocalArtifactStore, list[BuildProgress]]) -> None:
    report, store, _ = cnn_build
    golden = digits_cnn.golden
    for variant_id in ("onnxruntime-fp32", "onnxruntime-int8"):
        variant = report.variant(variant_id)
        assert variant.key is not None and variant.evaluation is not None
        outputs = _ort_outputs(store.read_bytes(variant.key), golden.inputs)
        accuracy = float(np.mean(outputs.argmax(1) == golden.labels))
        agreement = float(np.mean(outputs.argmax(1) == golden.reference_outputs.argmax(1)))
        assert variant.evaluation.accuracy == pytest.approx(accuracy)
        assert variant.evaluation.top1_agreement == pytest.approx(agreement)
        assert float(variant.custom["accuracy"]) == pytest.approx(accuracy, abs=1e-6)
    fp32 = report.variant("onnxruntime-fp32").evaluation
    assert fp32 is not None and fp32.top1_agreement == 1.0 and fp32.max_abs_error < 1e-4
    assert fp32.accuracy == pytest.approx(digits_cnn.accuracy)
    int8 = report.variant("onnxruntime-int8")
    assert int8.custom["quantization"] == "static-qdq"  # a conv net is calibrated, not dynamic
    assert int8.length < report.variant("onnxruntime-fp32").length
    assert int8.evaluation is not None and int8.evaluation.max_abs_error > 0  # really quantized


def test_openvino_packages(digits_cnn: SampleModel,
                           cnn_build: tuple[BuildReport, LocalArtifactStore, list[BuildProgress]]) -> None:
    report, store, _ = cnn_build
    sizes = {}
    for variant_id in ("openvino-fp32", "openvino-fp16"):
        variant = report.variant(variant_id)
        assert variant.key is not None
        package = store.read_bytes(variant.key)
        with tarfile.open(fileobj=io.BytesIO(package)) as tar:
            assert tar.getnames() == ["model.xml", "model.bin"]
        xml, weights = unpack_ir(package)
        assert b"<net " in xml
        sizes[variant_id] = len(weights)
        outputs = openvino_runner(package, threads=1)(digits_cnn.golden.inputs)
        assert variant.evaluation is not None
        assert variant.evaluation.accuracy == pytest.approx(float(np.mean(outputs.argmax(1) == digits_cnn.golden.labels)))
        assert variant.custom["format"] == "openvino-ir-tar"
    assert sizes["openvino-fp16"] < 0.7 * sizes["openvino-fp32"]


def test_tensorrt_variant_is_the_onnx_with_build_settings(
        digits_cnn: SampleModel, cnn_build: tuple[BuildReport, LocalArtifactStore, list[BuildProgress]]) -> None:
    report, store, _ = cnn_build
    trt = report.variant("tensorrt-fp16")
    assert trt.status == "unverified" and trt.offered and trt.evaluation is None
    assert trt.key is not None and store.read_bytes(trt.key) == digits_cnn.path.read_bytes()
    assert trt.custom["accelerator"] == "cuda" and trt.custom["evaluated"] is False
    assert trt.custom["trt_input_shape"] == [1, 8, 8]
    assert trt.custom["trt_min_batch"] <= trt.custom["trt_opt_batch"] <= trt.custom["trt_max_batch"]


def test_progress_is_monotonic(cnn_build: tuple[BuildReport, LocalArtifactStore, list[BuildProgress]]) -> None:
    _, _, events = cnn_build
    fractions = [e.fraction for e in events]
    assert fractions == sorted(fractions) and fractions[0] == 0.0 and fractions[-1] == 1.0
    assert {e.step for e in events} >= set(ALL_VARIANTS)


def test_mlp_gets_dynamic_int8(digits_mlp: SampleModel, tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path)
    options = BuildOptions(latency_runs=5, variants=("onnxruntime-fp32", "onnxruntime-int8"))
    report = _build(digits_mlp, store, options)
    int8 = report.variant("onnxruntime-int8")
    assert int8.custom["quantization"] == "dynamic"
    assert int8.status == "ready"


def test_floor_rejects_but_keeps_the_record(digits_cnn: SampleModel, tmp_path: Path) -> None:
    """A floor above what the build measures: every measured variant is kept as a record, none offered."""
    store = LocalArtifactStore(tmp_path)
    floor = digits_cnn.accuracy + 0.005
    options = BuildOptions(latency_runs=5, accuracy_floor=floor,
                           variants=("onnxruntime-fp32", "onnxruntime-int8", "tensorrt-fp16"))
    report = _build(digits_cnn, store, options)
    for variant_id in ("onnxruntime-fp32", "onnxruntime-int8"):
        variant = report.variant(variant_id)
        assert variant.status == "rejected" and not variant.offered
        assert variant.reason is not None and "below the release floor" in variant.reason
        assert variant.key is not None and store.exists(variant.key)  # the record keeps its artifact
    assert [v.variant_id for v in report.offered()] == ["tensorrt-fp16"]


def _build_fp32_and_int8(model: bytes, inputs: np.ndarray, store: LocalArtifactStore, name: str) -> BuildReport:
    """A hand-built model with a golden set whose labels are its own argmax, built as fp32 and dynamic int8."""
    buffer = io.BytesIO()
    np.savez(buffer, inputs=inputs, labels=inputs.argmax(1))
    return build_variants(model, buffer.getvalue(), store, model=name, version="1",
                          options=BuildOptions(latency_runs=3, int8_method="dynamic",
                                               variants=("onnxruntime-fp32", "onnxruntime-int8")))


def test_failed_variant_is_recorded_and_others_continue(tmp_path: Path) -> None:
    """Dynamic int8 of a float16 MatMul yields a graph ONNX Runtime refuses: recorded as failed, no artifact,
    and the other variants are built anyway."""
    from onnx import TensorProto, helper, numpy_helper

    weights = numpy_helper.from_array(np.eye(4, dtype=np.float16), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["input", "w"], ["probabilities"])], "half",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT16, ["n", 4])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT16, ["n", 4])], [weights])
    store = LocalArtifactStore(tmp_path)
    report = _build_fp32_and_int8(portable_model(graph).SerializeToString(),
                                  np.random.default_rng(0).random((8, 4)).astype(np.float16), store, "half")
    int8 = report.variant("onnxruntime-int8")
    assert int8.status == "failed" and int8.key is None and not int8.offered
    assert int8.reason is not None and int8.reason.startswith("evaluation_failed")
    fp32 = report.variant("onnxruntime-fp32")
    assert fp32.status == "ready" and fp32.evaluation is not None and fp32.evaluation.accuracy == 1.0
    assert list(store.list("releases/half/1/")) == ["releases/half/1/golden.npz",
                                                     "releases/half/1/onnxruntime-fp32.onnx"]


def test_store_failure_cleans_up(digits_mlp: SampleModel, tmp_path: Path) -> None:
    """If the store breaks mid-build, what was written is deleted and the error propagates."""

    class FailingStore(LocalArtifactStore):
        def write_bytes(self, key: str, data: bytes) -> None:
            if key.endswith("int8.onnx"):
                raise OSError("disk full")
            super().write_bytes(key, data)

    store = FailingStore(tmp_path)
    with pytest.raises(OSError):
        _build(digits_mlp, store, BuildOptions(latency_runs=3, variants=("onnxruntime-fp32", "onnxruntime-int8")))
    assert list(store.list()) == []


def test_variants_carry_the_lowest_ir_version_of_their_opset(tmp_path: Path) -> None:
    """An upload stamped with the newest IR version `onnx.helper` knows (older runtimes refuse it at load)
    is offered with the lowest IR version its opset allows, and the runtime requirement of that opset."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weights = numpy_helper.from_array(np.eye(4, dtype=np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["input", "w"], ["logits"]), helper.make_node("Softmax", ["logits"], ["probabilities"])],
        "newest-ir", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["n", 4])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["n", 4])], [weights])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert model.ir_version > helper.find_min_ir_version_for(list(model.opset_import))
    store = LocalArtifactStore(tmp_path)
    report = _build_fp32_and_int8(model.SerializeToString(),
                                  np.random.default_rng(0).random((16, 4)).astype(np.float32), store, "ir")
    for variant in report.variants:
        assert variant.status == "ready" and variant.key is not None, (variant.variant_id, variant.reason)
        built = onnx.load_model_from_string(store.read_bytes(variant.key))
        opset = max(e.version for e in built.opset_import if e.domain in ("", "ai.onnx"))
        assert built.ir_version == helper.find_min_ir_version_for(list(built.opset_import), ignore_unknown=True)
        assert variant.custom["runtime_version"] == min_onnxruntime_for(opset)
