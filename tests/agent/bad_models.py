"""Variants of a good ONNX model that a gate must refuse, built with `onnx` (tests only), and int8
variants quantized with onnxruntime's static QDQ quantizer calibrated on the golden set."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper


def _save(model: onnx.ModelProto, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def scrambled_weights(src: Path, out: Path, seed: int = 7) -> Path:
    """Same graph, same shapes, every float initializer shuffled: loads and runs, predicts garbage."""
    model = onnx.load(str(src))
    rng = np.random.default_rng(seed)
    for init in model.graph.initializer:
        arr = numpy_helper.to_array(init)
        if arr.dtype.kind == "f" and arr.size > 1:
            flat = arr.reshape(-1).copy()
            rng.shuffle(flat)
            init.CopyFrom(numpy_helper.from_array(flat.reshape(arr.shape), init.name))
    return _save(model, out)


def _rewire_output(model: onnx.ModelProto, nodes: list[onnx.NodeProto], inits: list[onnx.TensorProto],
                   new_output: str) -> None:
    out = model.graph.output[0]
    old_name = out.name
    for node in model.graph.node:  # the original producer now writes an internal name
        node.output[:] = [f"{o}__orig" if o == old_name else o for o in node.output]
        node.input[:] = [f"{i}__orig" if i == old_name else i for i in node.input]
    for node in nodes:
        node.input[:] = [f"{i}__orig" if i == old_name else i for i in node.input]
        node.output[:] = [old_name if o == new_output else o for o in node.output]
    model.graph.node.extend(nodes)
    model.graph.initializer.extend(inits)


def nan_outputs(src: Path, out: Path, classes: int = 10) -> Path:
    """Multiplies one class column by NaN: argmax alone would silently pick that class."""
    model = onnx.load(str(src))
    scale = np.ones((1, classes), dtype=np.float32)
    scale[0, 3] = np.nan
    _rewire_output(model, [helper.make_node("Mul", [model.graph.output[0].name, "nan_scale"], ["y"])],
                   [numpy_helper.from_array(scale, "nan_scale")], "y")
    return _save(model, out)


def hidden_heavy_op(src: Path, out: Path, width: int = 2048, layers: int = 3) -> Path:
    """Adds 0 x (a chain of big MatMuls on the input): identical outputs, far more compute."""
    model = onnx.load(str(src))
    x = model.graph.input[0].name
    in_dim = model.graph.input[0].type.tensor_type.shape.dim[1].dim_value
    rng = np.random.default_rng(3)
    inits = [numpy_helper.from_array((rng.standard_normal((in_dim, width)) * 0.01).astype(np.float32), "heavy_w0")]
    nodes = [helper.make_node("MatMul", [x, "heavy_w0"], ["heavy_0"])]
    for i in range(1, layers + 1):
        inits.append(numpy_helper.from_array((rng.standard_normal((width, width)) * 0.01).astype(np.float32),
                                             f"heavy_w{i}"))
        nodes.append(helper.make_node("MatMul", [f"heavy_{i - 1}", f"heavy_w{i}"], [f"heavy_{i}"]))
    inits.append(numpy_helper.from_array(np.zeros((1,), dtype=np.float32), "heavy_zero"))
    nodes += [
        helper.make_node("ReduceMean", [f"heavy_{layers}"], ["heavy_sum"], axes=[1], keepdims=1),
        helper.make_node("Mul", ["heavy_sum", "heavy_zero"], ["heavy_nil"]),
        helper.make_node("Add", [model.graph.output[0].name, "heavy_nil"], ["y"]),
    ]
    _rewire_output(model, nodes, inits, "y")
    if not any(o.domain in ("", "ai.onnx") and o.version < 18 for o in model.opset_import):
        raise ValueError("ReduceMean with an axes attribute needs opset < 18")
    return _save(model, out)


def unloadable(src: Path, out: Path) -> Path:
    """The first half of the file: a truncated protobuf."""
    data = src.read_bytes()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(data[: len(data) // 2])
    return out


def unsupported_opset(src: Path, out: Path, version: int = 99) -> Path:
    model = onnx.load(str(src))
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx"):
            opset.version = version
    return _save(model, out)


def static_int8(src: Path, out: Path, calibration: np.ndarray) -> Path:
    """Static QDQ int8 (u8 activations, s8 weights), calibrated on `calibration` rows."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    model = onnx.load(str(src))
    input_name = model.graph.input[0].name

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.rows = iter(calibration[i:i + 1].astype(np.float32) for i in range(len(calibration)))

        def get_next(self) -> dict[str, np.ndarray] | None:
            row = next(self.rows, None)
            return None if row is None else {input_name: row}

    out.parent.mkdir(parents=True, exist_ok=True)
    prepped = out.with_suffix(".prep.onnx")
    quant_pre_process(str(src), str(prepped), skip_symbolic_shape=True)
    quantize_static(str(prepped), str(out), Reader(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=False)
    prepped.unlink()
    return out


def degraded(src: Path, out: Path, golden_inputs: np.ndarray, golden_labels: np.ndarray,
             noise: float = 0.8, seed: int = 3) -> tuple[Path, Path, float]:
    """A clearly weaker but sane release of the same model (gaussian noise of `noise` x each weight
    tensor's spread): finite outputs, its own golden set (reference outputs are its own, the labels the
    true ones). Returns (model, golden set, accuracy on the labels)."""
    import onnxruntime as ort

    model = onnx.load(str(src))
    rng = np.random.default_rng(seed)
    for init in model.graph.initializer:
        arr = numpy_helper.to_array(init)
        if arr.dtype.kind == "f" and arr.size > 1:
            noisy = arr + rng.normal(0.0, noise * float(arr.std()), arr.shape).astype(arr.dtype)
            init.CopyFrom(numpy_helper.from_array(noisy, init.name))
    _save(model, out)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    outputs = session.run(None, {session.get_inputs()[0].name: golden_inputs})[0].astype(np.float32)
    golden = out.with_name(out.stem + "-golden.npz")
    np.savez(golden, inputs=golden_inputs, labels=golden_labels, reference_outputs=outputs)
    return out, golden, float(np.mean(np.argmax(outputs, axis=1) == golden_labels))
