"""Real, small ONNX models built deterministically on this machine, each with a golden set.

Tests, benchmarks and the demo need models that actually classify something, without downloading
weights or data. scikit-learn ships the 8x8 handwritten digits data set (1,797 images), which is enough
to train:

| builder                  | graph                                              | input          | golden set                 |
|--------------------------|----------------------------------------------------|----------------|----------------------------|
| `train_digits_mlp`       | MLPClassifier (skl2onnx), cut to `probabilities`   | [-1, 64]       | 360 held-out digits        |
| `build_digits_cnn`       | seeded conv features + trained logistic head       | [-1, 1, 8, 8]  | 360 held-out digits        |
| `build_mobilenet_like`   | MobileNetV2-shaped, seeded random weights          | [-1, 3, S, S]  | seeded random images       |

Every model has one float32 input called `input` and one float32 output called `probabilities`
(softmax over classes), a dynamic batch dimension, and only default-domain operators, so ONNX
Runtime, OpenVINO and static int8 quantization all accept it. The digits MLP deliberately drops
skl2onnx's ZipMap and int64 `label` outputs for that reason.

A golden set (`golden.npz`: `inputs`, `labels`, `reference_outputs`) sits beside each model. Reference
outputs come from ONNX Runtime on the exported graph, so a variant that drifts from the original is
caught by comparing against them. The MobileNet-like model has random weights: its labels are its own
top-1 predictions (it exists for compute, not for accuracy).

This module is controller-side (scikit-learn, onnx, skl2onnx); the agent never imports it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

INPUT_NAME = "input"
OUTPUT_NAME = "probabilities"
GOLDEN_FILE = "golden.npz"
MODEL_FILE = "model.onnx"
OPSET = 17
_SEED = 20240601
_HELD_OUT_FRACTION = 0.2


@dataclass(frozen=True)
class GoldenSet:
    """Inputs with their true labels and the original model's outputs on them."""

    inputs: np.ndarray
    labels: np.ndarray
    reference_outputs: np.ndarray

    def save(self, path: Path) -> None:
        np.savez(path, inputs=self.inputs, labels=self.labels, reference_outputs=self.reference_outputs)

    @classmethod
    def load(cls, path: Path) -> GoldenSet:
        with np.load(path, allow_pickle=False) as data:
            return cls(data["inputs"], data["labels"], data["reference_outputs"])

    def accuracy(self, outputs: np.ndarray) -> float:
        """Top-1 accuracy of `outputs` (one row of class scores per input) against the labels."""
        return float(np.mean(np.argmax(outputs, axis=1) == self.labels))


@dataclass(frozen=True)
class SampleModel:
    """A built model on disk and what a test needs to feed and judge it."""

    path: Path
    golden_path: Path
    golden: GoldenSet
    input_name: str
    output_name: str
    accuracy: float



def portable_model(graph: onnx.GraphProto, opset: int = OPSET) -> onnx.ModelProto:
    """A model at the lowest IR version its opset allows: `make_model` stamps the newest IR version the
    installed onnx knows, which older runtimes on devices (and onnxruntime on Python 3.10) refuse."""
    opsets = [helper.make_opsetid("", opset)]
    return helper.make_model(graph, opset_imports=opsets, ir_version=helper.find_min_ir_version_for(opsets))

def _digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The bundled digits, scaled to [0, 1], split the same way every time (stratified)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=_HELD_OUT_FRACTION, random_state=0, stratify=y
    )
    return x_train, x_test, y_train, y_test


def _run(model: onnx.ModelProto, inputs: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    out: np.ndarray = session.run(None, {session.get_inputs()[0].name: inputs})[0]
    return out


def _finish(model: onnx.ModelProto, path: Path, golden_inputs: np.ndarray, labels: np.ndarray) -> SampleModel:
    """Check and save the model, compute its reference outputs and write the golden set beside it."""
    model.producer_name = "edgefleet.sample_models"
    model.producer_version = "1"
    onnx.checker.check_model(model, full_check=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model.SerializeToString())
    reference = _run(model, golden_inputs).astype(np.float32)
    golden = GoldenSet(golden_inputs, labels, reference)
    golden_path = path.parent / GOLDEN_FILE
    golden.save(golden_path)
    return SampleModel(path, golden_path, golden, INPUT_NAME, OUTPUT_NAME, golden.accuracy(reference))


def train_digits_mlp(out_dir: Path) -> SampleModel:
    """A 64-128-10 MLP trained on the digits, exported with skl2onnx, reduced to its float output."""
    import warnings

    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    x_train, x_test, y_train, y_test = _digits()
    clf = MLPClassifier(hidden_layer_sizes=(128,), max_iter=300, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(x_train, y_train)
    exported = to_onnx(
        clf,
        initial_types=[(INPUT_NAME, FloatTensorType([None, x_train.shape[1]]))],
        options={id(clf): {"zipmap": False}},
        target_opset={"": OPSET, "ai.onnx.ml": 3},
    )
    assert isinstance(exported, onnx.ModelProto)
    model = onnx.utils.Extractor(exported).extract_model([INPUT_NAME], [OUTPUT_NAME])
    _drop_unused_opsets(model)
    for value in (model.graph.input[0], model.graph.output[0]):
        value.type.tensor_type.shape.dim[0].dim_param = "batch"  # named, as in the other models
    model.graph.name = "digits_mlp"
    return _finish(model, Path(out_dir) / MODEL_FILE, x_test, y_test)


def _drop_unused_opsets(model: onnx.ModelProto) -> None:
    used = {node.domain for node in model.graph.node}
    keep = [op for op in model.opset_import if op.domain in used or op.domain in ("", "ai.onnx")]
    del model.opset_import[:]
    model.opset_import.extend(keep)


def _tensor(name: str, value: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.ascontiguousarray(value, dtype=np.float32), name)


def build_digits_cnn(out_dir: Path) -> SampleModel:
    """Conv(1->16) ReLU Conv(16->32) ReLU MaxPool Flatten Gemm Softmax on [-1, 1, 8, 8] digits.

    The convolutions keep seeded He-initialised weights (a fixed random feature map); the head is a
    scikit-learn logistic regression trained on those features, with the feature standardisation folded
    into the Gemm. Features are computed by ONNX Runtime on the very graph that gets shipped, so the head
    is trained on exactly what it will see.
    """
    from sklearn.linear_model import LogisticRegression

    x_train, x_test, y_train, y_test = _digits()
    x_train = x_train.reshape(-1, 1, 8, 8)
    x_test = x_test.reshape(-1, 1, 8, 8)
    rng = np.random.default_rng(_SEED)
    w1 = rng.standard_normal((16, 1, 3, 3)) * np.sqrt(2 / 9)
    w2 = rng.standard_normal((32, 16, 3, 3)) * np.sqrt(2 / (9 * 16))
    inits = [
        _tensor("conv1.w", w1),
        _tensor("conv1.b", np.zeros(16)),
        _tensor("conv2.w", w2),
        _tensor("conv2.b", np.zeros(32)),
    ]
    nodes = [
        helper.make_node("Conv", [INPUT_NAME, "conv1.w", "conv1.b"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "conv2.w", "conv2.b"], ["c2"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("MaxPool", ["r2"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["p"], ["features"], axis=1),
    ]
    x_info = helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["batch", 1, 8, 8])

    def graph(
        outputs: list[onnx.ValueInfoProto],
        extra_nodes: list[onnx.NodeProto],
        extra_inits: list[onnx.TensorProto],
    ) -> onnx.ModelProto:
        g = helper.make_graph(nodes + extra_nodes, "digits_cnn", [x_info], outputs, inits + extra_inits)
        return portable_model(g)

    feature_model = graph(
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", 512])], [], []
    )
    f_train = _run(feature_model, x_train).astype(np.float64)
    mean = f_train.mean(axis=0)
    scale = f_train.std(axis=0) + 1e-3
    head = LogisticRegression(max_iter=2000).fit((f_train - mean) / scale, y_train)
    # (f - mean) / scale @ W.T + b  ==  f @ (W / scale).T + (b - (W / scale) @ mean)
    weight = head.coef_ / scale
    bias = head.intercept_ - weight @ mean
    model = graph(
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["batch", 10])],
        [
            helper.make_node("Gemm", ["features", "head.w", "head.b"], ["logits"], transB=1),
            helper.make_node("Softmax", ["logits"], [OUTPUT_NAME], axis=1),
        ],
        [_tensor("head.w", weight), _tensor("head.b", bias)],
    )
    return _finish(model, Path(out_dir) / MODEL_FILE, x_test, y_test)


# MobileNetV2's inverted-residual settings: expansion t, output channels c, repeats n, first stride s.
_MOBILENET_V2_BLOCKS = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


class _GraphBuilder:
    """Accumulates Conv(+bias)+ReLU6 nodes with seeded He-initialised weights (BatchNorm folded away)."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._count = 0
        self.inits.append(_tensor("relu6.min", np.array(0.0)))
        self.inits.append(_tensor("relu6.max", np.array(6.0)))

    def name(self, stem: str) -> str:
        self._count += 1
        return f"{stem}{self._count}"

    def conv(
        self, x: str, c_in: int, c_out: int, kernel: int, stride: int = 1, groups: int = 1, relu6: bool = True
    ) -> str:
        fan_in = (c_in // groups) * kernel * kernel
        w = self.rng.standard_normal((c_out, c_in // groups, kernel, kernel)) * np.sqrt(2.0 / fan_in)
        b = self.rng.standard_normal(c_out) * 0.01
        wn, bn, out = self.name("w"), self.name("b"), self.name("conv")
        self.inits += [_tensor(wn, w), _tensor(bn, b)]
        pad = kernel // 2
        self.nodes.append(
            helper.make_node(
                "Conv",
                [x, wn, bn],
                [out],
                kernel_shape=[kernel, kernel],
                strides=[stride, stride],
                pads=[pad] * 4,
                group=groups,
            )
        )
        if not relu6:
            return out
        act = self.name("relu6_")
        self.nodes.append(helper.make_node("Clip", [out, "relu6.min", "relu6.max"], [act]))
        return act


def build_mobilenet_like(
    path: Path, image_size: int = 224, num_classes: int = 1000, golden_size: int = 8
) -> SampleModel:
    """A MobileNetV2-shaped classifier with seeded random weights: realistic compute, no download.

    Writes the model to `path` and `golden.npz` beside it. Labels are the model's own top-1 outputs.
    """
    if image_size < 32 or image_size % 32:
        raise ValueError(f"image_size must be a positive multiple of 32, got {image_size}")
    b = _GraphBuilder(_SEED)
    x = b.conv(INPUT_NAME, 3, 32, 3, stride=2)
    c_in = 32
    for t, c, n, s in _MOBILENET_V2_BLOCKS:
        for i in range(n):
            stride = s if i == 0 else 1
            hidden = c_in * t
            y = b.conv(x, c_in, hidden, 1) if t != 1 else x
            y = b.conv(y, hidden, hidden, 3, stride=stride, groups=hidden)
            y = b.conv(y, hidden, c, 1, relu6=False)
            if stride == 1 and c_in == c:
                added = b.name("add")
                b.nodes.append(helper.make_node("Add", [x, y], [added]))
                y = added
            x, c_in = y, c
    x = b.conv(x, c_in, 1280, 1)
    b.nodes.append(helper.make_node("GlobalAveragePool", [x], ["pooled"]))
    b.nodes.append(helper.make_node("Flatten", ["pooled"], ["features"], axis=1))
    w = b.rng.standard_normal((num_classes, 1280)) * np.sqrt(1.0 / 1280)
    b.inits += [_tensor("fc.w", w), _tensor("fc.b", np.zeros(num_classes))]
    b.nodes.append(helper.make_node("Gemm", ["features", "fc.w", "fc.b"], ["logits"], transB=1))
    b.nodes.append(helper.make_node("Softmax", ["logits"], [OUTPUT_NAME], axis=1))
    graph = helper.make_graph(
        b.nodes,
        "mobilenet_like",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["batch", 3, image_size, image_size])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["batch", num_classes])],
        b.inits,
    )
    model = portable_model(graph)
    images = _clear_margin_inputs(model, golden_size, image_size)
    labels = np.argmax(_run(model, images), axis=1).astype(np.int64)
    return _finish(model, Path(path), images, labels)


def _clear_margin_inputs(model: onnx.ModelProto, count: int, image_size: int) -> np.ndarray:
    """Seeded random images, keeping the `count` of 4x as many whose top-1 wins by the widest margin.

    With random weights and 1000 classes the two best logits of a random image are often near ties,
    and a runtime computing in lower precision (OpenVINO picks bf16 by itself on CPUs that have it)
    flips them. Golden inputs with a clear winner make top-1 agreement a fair test of a variant.
    """
    rng = np.random.default_rng(_SEED + 1)
    candidates = rng.standard_normal((4 * count, 3, image_size, image_size)).astype(np.float32)
    log_probs = np.log(np.maximum(_run(model, candidates), 1e-30))
    top2 = np.sort(log_probs, axis=1)[:, -2:]
    margin = top2[:, 1] - top2[:, 0]  # logit gap between the best and the runner-up
    keep = np.sort(np.argsort(-margin, kind="stable")[:count])
    return np.ascontiguousarray(candidates[keep])


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m controller.sample_models OUT_DIR`: build all three models into sub-folders."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--image-size", type=int, default=224)
    args = parser.parse_args(argv)
    out: Path = args.out_dir
    for label, built in (
        ("digits_mlp", train_digits_mlp(out / "digits_mlp")),
        ("digits_cnn", build_digits_cnn(out / "digits_cnn")),
        ("mobilenet_like", build_mobilenet_like(out / "mobilenet_like" / MODEL_FILE, args.image_size)),
    ):
        print(f"{label}: {built.path} accuracy={built.accuracy:.4f} golden={len(built.golden.labels)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
