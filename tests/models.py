"""Session-scoped fixtures that build the real sample models once per test run.

`digits_mlp` and `digits_cnn` are trained here from scikit-learn's bundled digits (no download);
`mobilenet_like` is a MobileNetV2-shaped graph with seeded random weights for tests that need compute;
`textdir_classifier` is a real pretrained model (see tests/textdir.py). Each fixture returns a
`SampleModel`: `.path`, `.golden` (inputs, labels, reference_outputs), `.golden_path`, `.input_name`,
`.output_name`, `.accuracy`. Tests must treat the files as read-only: copy them before changing them.
"""

from __future__ import annotations

import pytest

from controller.sample_models import (
    MODEL_FILE,
    SampleModel,
    build_digits_cnn,
    build_mobilenet_like,
    train_digits_mlp,
)


@pytest.fixture(scope="session")
def digits_mlp(tmp_path_factory: pytest.TempPathFactory) -> SampleModel:
    return train_digits_mlp(tmp_path_factory.mktemp("digits_mlp"))


@pytest.fixture(scope="session")
def digits_cnn(tmp_path_factory: pytest.TempPathFactory) -> SampleModel:
    return build_digits_cnn(tmp_path_factory.mktemp("digits_cnn"))


@pytest.fixture(scope="session")
def mobilenet_like(tmp_path_factory: pytest.TempPathFactory) -> SampleModel:
    """224x224 MobileNetV2-shaped classifier (random weights, 1000 classes, 8 golden images)."""
    return build_mobilenet_like(tmp_path_factory.mktemp("mobilenet_like") / MODEL_FILE)


@pytest.fixture(scope="session")
def textdir_classifier(tmp_path_factory: pytest.TempPathFactory) -> SampleModel:
    """PaddleOCR's pretrained text-direction classifier (0 vs 180 degrees) with a rendered golden set."""
    from tests.textdir import TextDirectionUnavailable, build_textdir_classifier

    try:
        return build_textdir_classifier(tmp_path_factory.mktemp("textdir"))
    except TextDirectionUnavailable as e:
        pytest.skip(f"needs the rapidocr-onnxruntime wheel: {e}")
