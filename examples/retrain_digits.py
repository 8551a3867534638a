"""Retrain the digits MLP with samples captured on devices, and export the new model to ONNX.

    edgefleet samples export --model digits-mlp --out data/captured
    python examples/retrain_digits.py --dataset data/captured --labels labels.json --out retrained.onnx

The exported dataset (see `controller.samples.export`) holds each captured input row and what the
deployed model answered. Captured rows are valuable precisely where the model was unsure or wrong, so
they need labels: `--labels` maps sample ids to the true digit (the output of a labelling step). Without
it the script falls back to pseudo-labels — the deployed model's own answer, kept only above
`--min-confidence` — and says so, since that can only reinforce what the model already believes.

The new model is trained on scikit-learn's bundled digits training split plus the captured rows
(weighted by `--captured-weight` through repetition), evaluated on the held-out split, and written
with skl2onnx in the same input/output layout as the deployed model ("input" → "probabilities"), ready
for `edgefleet models upload`. The last line printed is one JSON object of figures.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import numpy as np

INPUT_NAME = "input"
OUTPUT_NAME = "probabilities"


def load_captured(dataset: Path, labels_file: Path | None, min_confidence: float) -> tuple[np.ndarray, np.ndarray, str]:
    from controller.samples.export import load_dataset

    arrays, manifest = load_dataset(dataset)
    x = arrays.get(f"input.{INPUT_NAME}")
    if x is None or x.ndim != 2 or x.shape[1] != 64:
        raise SystemExit(f"{dataset}: expected input.{INPUT_NAME} of shape (N, 64), found {sorted(arrays)}")
    ids = [s["sample_id"] for s in manifest["samples"]]
    if labels_file is not None:
        labels = json.loads(labels_file.read_text())
        keep = [i for i, sample_id in enumerate(ids) if sample_id in labels]
        y = np.array([int(labels[ids[i]]) for i in keep], dtype=np.int64)
        return x[keep].astype(np.float32), y, "labels"
    scores = arrays.get(f"output.{OUTPUT_NAME}")
    if scores is None:
        raise SystemExit(f"{dataset}: no labels given and no output.{OUTPUT_NAME} to pseudo-label from")
    print("no --labels: using the deployed model's confident answers as pseudo-labels", file=sys.stderr)
    keep_mask = scores.max(axis=1) >= min_confidence
    return x[keep_mask].astype(np.float32), scores[keep_mask].argmax(axis=1).astype(np.int64), "pseudo"


def train(x_captured: np.ndarray, y_captured: np.ndarray, captured_weight: int, seed: int,
          max_iter: int = 300) -> tuple[object, float]:
    from sklearn.datasets import load_digits
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.model_selection import train_test_split
    from sklearn.neural_network import MLPClassifier

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    x_train, x_test, y_train, y_test = train_test_split(x, digits.target, test_size=0.2, random_state=seed,
                                                        stratify=digits.target)
    if len(x_captured):
        x_train = np.concatenate([x_train, *([x_captured] * captured_weight)])
        y_train = np.concatenate([y_train, *([y_captured] * captured_weight)])
    clf = MLPClassifier(hidden_layer_sizes=(128,), max_iter=max_iter, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(x_train, y_train)
    return clf, float(clf.score(x_test, y_test))


def export_onnx(clf: object, out: Path) -> None:
    import onnx
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType

    model = to_onnx(clf, initial_types=[(INPUT_NAME, FloatTensorType([None, 64]))],
                    options={id(clf): {"zipmap": False}}, target_opset={"": 17, "ai.onnx.ml": 3})
    assert isinstance(model, onnx.ModelProto)
    model = onnx.utils.Extractor(model).extract_model([INPUT_NAME], [OUTPUT_NAME])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(model.SerializeToString())


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", type=Path, required=True, help="folder written by `edgefleet samples export`")
    parser.add_argument("--labels", type=Path, help="JSON object: sample_id -> digit")
    parser.add_argument("--out", type=Path, required=True, help="where to write the retrained ONNX model")
    parser.add_argument("--min-confidence", type=float, default=0.9)
    parser.add_argument("--captured-weight", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-iter", type=int, default=300, help="training epochs (fewer: faster, rougher)")
    args = parser.parse_args(argv)
    x_captured, y_captured, source = load_captured(args.dataset, args.labels, args.min_confidence)
    print(f"captured rows used: {len(x_captured)} ({source})")
    clf, accuracy = train(x_captured, y_captured, args.captured_weight, args.seed, args.max_iter)
    export_onnx(clf, args.out)
    print(f"held-out accuracy: {accuracy:.4f}; model written to {args.out}")
    figures: dict[str, object] = {"captured_rows": len(x_captured), "label_source": source,
                                  "accuracy": round(accuracy, 4), "model": str(args.out)}
    print(json.dumps(figures))
    return figures


if __name__ == "__main__":
    main()
