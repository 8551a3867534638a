"""The demo's three releases of the digits classifier, trained here from scikit-learn's bundled data.

| release | what                                                   | expected on the fleet          |
|---------|--------------------------------------------------------|--------------------------------|
| v1      | a smaller MLP (48 hidden units, 100 iterations)         | installs everywhere            |
| v2      | the project's reference MLP (`train_digits_mlp`)        | better; rolls out in waves     |
| v3      | v2 with every weight shuffled (same graph, same speed)  | the canary's gate refuses it   |

v3's golden set has the true labels, so the build and each device's gate measure its accuracy.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from controller.sample_models import SampleModel, train_digits_mlp


def train_small_mlp(out_dir: Path) -> SampleModel:
    """v1: the same pipeline as the reference model with a much smaller network."""
    import onnx
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    from controller import sample_models as sm

    x_train, x_test, y_train, y_test = sm._digits()
    clf = MLPClassifier(hidden_layer_sizes=(48,), max_iter=100, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(x_train, y_train)
    exported = to_onnx(clf, initial_types=[(sm.INPUT_NAME, FloatTensorType([None, x_train.shape[1]]))],
                       options={id(clf): {"zipmap": False}}, target_opset={"": sm.OPSET, "ai.onnx.ml": 3})
    model = onnx.utils.Extractor(exported).extract_model([sm.INPUT_NAME], [sm.OUTPUT_NAME])
    sm._drop_unused_opsets(model)
    for value in (model.graph.input[0], model.graph.output[0]):
        value.type.tensor_type.shape.dim[0].dim_param = "batch"
    model.graph.name = "digits_mlp_small"
    return sm._finish(model, out_dir / "model.onnx", x_test, y_test)


def scrambled(good: SampleModel, out_dir: Path, seed: int = 7) -> SampleModel:
    """v3: `good` with its float weights shuffled; loads and runs at the same speed, predicts garbage.

    Its golden set holds the true labels and the scrambled model's own outputs, as a release with a
    training bug would ship: consistent with itself, so the upload checks accept it; only accuracy on
    the labels (at build time and in each device's gate) shows it is wrong.
    """
    import onnx
    from onnx import numpy_helper

    from controller import sample_models as sm

    model = onnx.load(str(good.path))
    rng = np.random.default_rng(seed)
    for init in model.graph.initializer:
        arr = numpy_helper.to_array(init)
        if arr.dtype.kind == "f" and arr.size > 1:
            flat = arr.reshape(-1).copy()
            rng.shuffle(flat)
            init.CopyFrom(numpy_helper.from_array(flat.reshape(arr.shape), init.name))
    return sm._finish(model, out_dir / "model.onnx", good.golden.inputs, good.golden.labels)


def build_releases(work_dir: Path) -> dict[str, SampleModel]:
    v1 = train_small_mlp(work_dir / "v1")
    v2 = train_digits_mlp(work_dir / "v2")
    return {"1": v1, "2": v2, "3": scrambled(v2, work_dir / "v3")}
