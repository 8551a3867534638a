"""The pretrained text-direction classifier (MobileNetV3-small, opset 11): the int8 variant's figures are
recorded exactly as measured — whatever they are — and a floor above them keeps it from devices."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from controller.artifacts import LocalArtifactStore
from controller.build import BuildOptions, build_variants
from controller.sample_models import SampleModel


def test_textdir_int8_recorded_honestly(textdir_classifier: SampleModel, tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path)
    options = BuildOptions(latency_runs=10, variants=("onnxruntime-fp32", "onnxruntime-int8", "openvino-fp16"))
    report = build_variants(textdir_classifier.path.read_bytes(), textdir_classifier.golden_path.read_bytes(),
                            store, model="textdir", version="2.0", options=options)
    golden = textdir_classifier.golden
    fp32, int8 = report.variant("onnxruntime-fp32"), report.variant("onnxruntime-int8")
    assert int8.status == "ready", int8.reason
    assert int8.custom["quantization"] == "static-qdq" and int8.custom["runtime_version"] == "1.6"  # opset 13
    # Re-measure the stored int8 artifact independently: the record must say exactly this.
    assert int8.key is not None and int8.evaluation is not None and fp32.evaluation is not None
    session = ort.InferenceSession(store.read_bytes(int8.key), providers=["CPUExecutionProvider"])
    outputs = session.run(None, {session.get_inputs()[0].name: golden.inputs})[0]
    accuracy = float(np.mean(outputs.argmax(1) == golden.labels))
    drift = float(np.abs(outputs - golden.reference_outputs).max())
    assert int8.evaluation.accuracy == pytest.approx(accuracy)
    assert int8.evaluation.max_abs_error == pytest.approx(drift, rel=1e-5)
    assert drift > fp32.evaluation.max_abs_error  # quantization really changed the numbers
    assert fp32.evaluation.accuracy == pytest.approx(textdir_classifier.accuracy)
    assert report.variant("openvino-fp16").evaluation is not None

    # A release floor just above int8's measured accuracy: int8 is kept as a record, not offered.
    strict = BuildOptions(latency_runs=3, variants=("onnxruntime-int8",),
                          accuracy_floor=min(1.0, accuracy + 1e-3))
    again = build_variants(textdir_classifier.path.read_bytes(), textdir_classifier.golden_path.read_bytes(),
                           store, model="textdir", version="2.1", options=strict)
    rejected = again.variant("onnxruntime-int8")
    assert rejected.status == "rejected" and not rejected.offered
    assert rejected.evaluation is not None and rejected.evaluation.accuracy == pytest.approx(accuracy)
