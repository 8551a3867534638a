"""Fixtures for the inference server: a real server on a loopback port, real ONNX models.

Models are the suite's digits MLP/CNN (tests/models.py) plus variants derived from the MLP with
`onnx` so two versions give measurably different outputs (to attribute every response to exactly
one version) or degrade only on some live inputs (for probation). The client helpers here encode
and decode the protocol independently of agent.server.protocol, so a codec bug cannot hide itself.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import struct
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from agent.runtime import RuntimeOptions, Session, loader_for
from agent.server.background import BackgroundServer
from agent.server.batching import BatchingConfig
from agent.server.http import ServerConfig
from agent.server.protocol import InferRequest
from agent.slots import ModelRef
from agent.state.ports import ActiveModel
from controller.sample_models import SampleModel, portable_model

DTYPES = {"FP32": "<f4", "FP64": "<f8", "FP16": "<f2", "INT64": "<i8", "INT32": "<i4", "INT8": "i1",
          "UINT8": "u1", "BOOL": "?", "INT16": "<i2", "UINT16": "<u2", "UINT32": "<u4", "UINT64": "<u8"}
DATATYPE_OF = {np.dtype(v): k for k, v in DTYPES.items()}


def load_session(path: Path, runtime: str = "onnxruntime", threads: int = 1) -> Session:
    return loader_for(runtime).load(path, RuntimeOptions(intra_op_threads=threads))


def start_server(**batching: Any) -> BackgroundServer:
    config = ServerConfig(port=0, max_body_bytes=batching.pop("max_body_bytes", 8 * 1024 * 1024),
                          max_concurrent_requests=batching.pop("max_concurrent_requests", 512),
                          drain_timeout_s=10.0, batching=BatchingConfig(**batching))
    return BackgroundServer(config).start()


@pytest.fixture
def server() -> Iterator[BackgroundServer]:
    srv = start_server(max_batch_size=16, max_queue_requests=512)
    yield srv
    srv.stop()


@pytest.fixture
def mlp_server(server: BackgroundServer, digits_mlp: SampleModel) -> BackgroundServer:
    """The digits MLP served as model 'digits' version '1'."""
    assert server.models is not None
    server.call(server.models.swap("digits", load_session(digits_mlp.path), "1", "ort-fp32"))
    return server


def binary_request(inputs: Mapping[str, np.ndarray], binary_outputs: bool = True,
                   outputs: list[str] | None = None) -> tuple[bytes, dict[str, str]]:
    """An infer body with every input as binary data (the client side, written independently)."""
    described, blobs = [], []
    for name, array in inputs.items():
        blob = np.ascontiguousarray(array).tobytes()
        datatype = DATATYPE_OF[array.dtype]
        described.append({"name": name, "shape": list(array.shape), "datatype": datatype,
                          "parameters": {"binary_data_size": len(blob)}})
        blobs.append(blob)
    doc: dict[str, Any] = {"inputs": described}
    if outputs is not None:
        doc["outputs"] = [{"name": n, "parameters": {"binary_data": binary_outputs}} for n in outputs]
    else:
        doc["parameters"] = {"binary_data_output": binary_outputs}
    header = json.dumps(doc).encode()
    return header + b"".join(blobs), {"Inference-Header-Content-Length": str(len(header)),
                                      "Content-Type": "application/octet-stream"}


def json_request(inputs: Mapping[str, np.ndarray]) -> dict[str, Any]:
    return {"inputs": [{"name": n, "shape": list(a.shape), "datatype": DATATYPE_OF[a.dtype],
                        "data": a.ravel().tolist()} for n, a in inputs.items()]}


def parse_response(body: bytes, headers: Mapping[str, str]) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Split a response into its JSON document and its outputs as arrays (JSON or binary)."""
    length = headers.get("Inference-Header-Content-Length")
    header_len = int(length) if length is not None else len(body)
    doc = json.loads(body[:header_len])
    arrays: dict[str, np.ndarray] = {}
    offset = header_len
    for out in doc["outputs"]:
        dtype = np.dtype(DTYPES[out["datatype"]])
        size = (out.get("parameters") or {}).get("binary_data_size")
        if size is None:
            arrays[out["name"]] = np.asarray(out["data"], dtype=dtype).reshape(out["shape"])
        else:
            arrays[out["name"]] = np.frombuffer(body[offset:offset + size], dtype=dtype).reshape(out["shape"])
            offset += size
    assert offset == len(body), f"{len(body) - offset} unexplained bytes after the outputs"
    return doc, arrays


def scaled_variant(model: SampleModel, factor: float, out: Path) -> Path:
    """The MLP with its first weight matrix scaled: same tensors, measurably different outputs."""
    proto = onnx.load(str(model.path))
    weights = [i for i in proto.graph.initializer if numpy_helper.to_array(i).ndim == 2]
    first = weights[0]
    first.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(first) * np.float32(factor), first.name))
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, str(out))
    return out


def degrading_variant(model: SampleModel, mode: str, out: Path) -> Path:
    """A model equal to the MLP on inputs in [0, 1] (the golden set) but bad on inputs above 1.

    Live traffic from a camera that sends raw 0..16 pixel values instead of scaled ones exercises
    the bad branch. mode "nan": outputs NaN there; "flip": outputs the reversed class scores
    (confidently wrong, so it disagrees with the previous model).
    """
    proto = onnx.load(str(model.path))
    g = proto.graph
    out_name = model.output_name
    inner = "inner_" + out_name
    for node in g.node:
        node.output[:] = [inner if o == out_name else o for o in node.output]
    g.initializer.extend([
        numpy_helper.from_array(np.array(1.0, np.float32), "one"),
        numpy_helper.from_array(np.full((1, 10), np.nan, np.float32), "nan_row"),
        numpy_helper.from_array(np.arange(9, -1, -1, dtype=np.int64), "reverse_idx"),
    ])
    g.node.extend([
        helper.make_node("ReduceMax", [model.input_name], ["row_max"], axes=[1], keepdims=1),
        helper.make_node("Greater", ["row_max", "one"], ["bad"]),
    ])
    if mode == "nan":
        g.node.append(helper.make_node("Where", ["bad", "nan_row", inner], [out_name]))
    elif mode == "flip":
        g.node.append(helper.make_node("Gather", [inner, "reverse_idx"], ["flipped"], axis=1))
        g.node.append(helper.make_node("Where", ["bad", "flipped", inner], [out_name]))
    else:
        raise ValueError(mode)
    del g.output[:]
    g.output.append(helper.make_tensor_value_info(out_name, TensorProto.FLOAT, [None, 10]))
    onnx.checker.check_model(proto)
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, str(out))
    return out


def pack_floats(values: list[float]) -> bytes:
    return struct.pack(f"<{len(values)}f", *values)


def active(path: Path, version: str, model: str = "digits") -> ActiveModel:
    """What the update engine hands the Activator for a model file in a slot."""
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    ref = ModelRef(sha256=sha, file_name=path.name, target=f"models/{model}/{version}/ort-fp32.onnx",
                   runtime="onnxruntime", precision="fp32", model=model, version=version)
    return ActiveModel(ref, path)


def request(x: np.ndarray, name: str = "input") -> InferRequest:
    """A decoded request for the in-process ModelServer API."""
    return InferRequest(None, {name: x}, x.shape[0] if x.ndim else None, None, True)


async def wait_for(predicate: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.005)


def identity_model(path: Path, shape: list[int | None]) -> Path:
    """A float32 Identity model with the given (partly dynamic) shape."""
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "identity",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)])
    onnx.save(portable_model(graph), str(path))
    return path
