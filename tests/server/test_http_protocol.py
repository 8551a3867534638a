"""Open Inference Protocol conformance over real HTTP: health, metadata, JSON and binary infer,
every error path, and a standard client (tritonclient) used unchanged."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest

from agent.server.background import BackgroundServer
from controller.sample_models import SampleModel, portable_model
from tests.server.conftest import binary_request, json_request, load_session, parse_response, start_server

INFER = "/v2/models/digits/infer"


@pytest.fixture
def client(mlp_server: BackgroundServer) -> httpx.Client:
    with httpx.Client(base_url=mlp_server.url, timeout=10.0) as c:
        yield c


def reference(model: SampleModel, x: np.ndarray) -> np.ndarray:
    out: np.ndarray = load_session(model.path).run({model.input_name: x})[model.output_name]
    return out


def test_health_and_server_metadata(client: httpx.Client) -> None:
    assert client.get("/v2/health/live").status_code == 200
    ready = client.get("/v2/health/ready")
    assert ready.status_code == 200 and ready.json() == {"ready": True}
    meta = client.get("/v2").json()
    assert meta["name"] == "edgefleet-agent" and "binary_tensor_data" in meta["extensions"]


def test_not_ready_without_models(server: BackgroundServer) -> None:
    r = httpx.get(server.url + "/v2/health/ready")
    assert r.status_code == 503 and r.json() == {"ready": False}
    assert httpx.get(server.url + "/v2/health/live").status_code == 200


def test_model_metadata_comes_from_the_onnx_model(client: httpx.Client) -> None:
    for path in ("/v2/models/digits", "/v2/models/digits/versions/1"):
        meta = client.get(path).json()
        assert meta["name"] == "digits" and meta["versions"] == ["1"]
        assert meta["platform"] == "onnxruntime_onnx"
        assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}]
        assert meta["outputs"] == [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]}]
    assert client.get("/v2/models/digits/ready").json() == {"name": "digits", "ready": True}
    assert client.get("/v2/models/digits/versions/1/ready").status_code == 200


def test_json_infer_matches_the_runtime(client: httpx.Client, digits_mlp: SampleModel) -> None:
    x = digits_mlp.golden.inputs[:3]
    r = client.post(INFER, json={"id": "req-7", **json_request({"input": x})})
    assert r.status_code == 200, r.text
    doc, outs = parse_response(r.content, r.headers)
    assert doc["model_name"] == "digits" and doc["model_version"] == "1" and doc["id"] == "req-7"
    assert r.headers["content-type"].startswith("application/json")
    np.testing.assert_allclose(outs["probabilities"], reference(digits_mlp, x), rtol=1e-5, atol=1e-6)


def test_json_accepts_nested_lists(client: httpx.Client, digits_mlp: SampleModel) -> None:
    x = digits_mlp.golden.inputs[:2]
    body = {"inputs": [{"name": "input", "shape": [2, 64], "datatype": "FP32", "data": x.tolist()}]}
    r = client.post(INFER, json=body)
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(parse_response(r.content, r.headers)[1]["probabilities"],
                               reference(digits_mlp, x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("binary_out", [True, False])
def test_binary_infer(client: httpx.Client, digits_mlp: SampleModel, binary_out: bool) -> None:
    x = digits_mlp.golden.inputs[5:9]
    body, headers = binary_request({"input": x}, binary_outputs=binary_out)
    r = client.post(INFER, content=body, headers=headers)
    assert r.status_code == 200, r.text
    assert ("inference-header-content-length" in r.headers) == binary_out
    doc, outs = parse_response(r.content, r.headers)
    assert doc["outputs"][0]["shape"] == [4, 10]
    np.testing.assert_allclose(outs["probabilities"], reference(digits_mlp, x), rtol=1e-5, atol=1e-6)


def test_per_output_binary_flag_and_pinned_version(client: httpx.Client, digits_mlp: SampleModel) -> None:
    x = digits_mlp.golden.inputs[:1]
    body, headers = binary_request({"input": x}, binary_outputs=True, outputs=["probabilities"])
    r = client.post("/v2/models/digits/versions/1/infer", content=body, headers=headers)
    assert r.status_code == 200, r.text
    doc, outs = parse_response(r.content, r.headers)
    assert doc["model_version"] == "1" and doc["outputs"][0]["parameters"]["binary_data_size"] == 40
    np.testing.assert_allclose(outs["probabilities"], reference(digits_mlp, x), rtol=1e-5, atol=1e-6)


def _error(r: httpx.Response, status: int, *fragments: str) -> None:
    assert r.status_code == status, (r.status_code, r.text)
    doc = r.json()
    assert set(doc) == {"error"} and isinstance(doc["error"], str)
    for fragment in fragments:
        assert fragment in doc["error"], doc["error"]


def test_lookup_errors(client: httpx.Client) -> None:
    _error(client.get("/v2/models/nope"), 404, "unknown model 'nope'")
    _error(client.post("/v2/models/nope/infer", json={}), 404, "nope")
    _error(client.get("/v2/models/digits/versions/9"), 404, "no loaded version '9'")
    _error(client.post("/v2/models/digits/versions/9/infer", json={}), 404, "'9'")
    _error(client.get("/v2/models/digits/versions/9/ready"), 404)
    _error(client.get("/v2/nothing/here"), 404)
    _error(client.get(INFER), 405)


ONE_ROW = [0.0] * 64


@pytest.mark.parametrize(("body", "fragment"), [
    (b"{not json", "not valid JSON"),
    (b"[1, 2]", "must be a JSON object"),
    (b'{"inputs": []}', "non-empty list"),
    (b'{"inputs": {"name": "input"}}', "non-empty list"),
    (b'{"inputs": [7]}', "inputs[0] must be an object"),
    (json.dumps({"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": ONE_ROW[:10]}]}).encode(),
     "needs 64 elements"),
    (json.dumps({"inputs": [{"name": "input", "shape": [1, 63], "datatype": "FP32", "data": ONE_ROW[:63]}]}).encode(),
     "expected shape [-1, 64], got [1, 63]"),
    (json.dumps({"inputs": [{"name": "input", "shape": [64], "datatype": "FP32", "data": ONE_ROW}]}).encode(),
     "expected shape [-1, 64], got [64]"),
    (json.dumps({"inputs": [{"name": "input", "shape": [0, 64], "datatype": "FP32", "data": []}]}).encode(),
     "at least 1"),
    (json.dumps({"inputs": [{"name": "input", "shape": [1, 64], "datatype": "INT64", "data": [0] * 64}]}).encode(),
     "expected datatype FP32, got INT64"),
    (json.dumps({"inputs": [{"name": "input", "shape": [1, 64], "datatype": "BYTES", "data": ["a"] * 64}]}).encode(),
     "unsupported datatype 'BYTES'"),
    (json.dumps({"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": ["x"] * 64}]}).encode(),
     "must be numbers"),
    (json.dumps({"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [[1, 2], [3]]}]}).encode(),
     "not a regular array"),
    (json.dumps({"inputs": [{"name": "image", "shape": [1, 64], "datatype": "FP32", "data": ONE_ROW}]}).encode(),
     "missing input(s) ['input']"),
    (json.dumps({"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": ONE_ROW}],
                 "outputs": [{"name": "logits"}]}).encode(), "unknown output 'logits'"),
    (json.dumps({"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": ONE_ROW}],
                 "parameters": {"binary_data_output": "yes"}}).encode(), "true or false"),
    (json.dumps({"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": ONE_ROW,
                             "parameters": {"shared_memory_region": "r0"}}]}).encode(), "shared-memory"),
    (json.dumps({"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": ONE_ROW}],
                 "id": 5}).encode(), "'id' must be a string"),
    (b'{"inputs": ' * 5000 + b"1" + b"}" * 5000, "not valid JSON"),
])
def test_bad_json_bodies_get_400(client: httpx.Client, body: bytes, fragment: str) -> None:
    _error(client.post(INFER, content=body, headers={"Content-Type": "application/json"}), 400, fragment)


def test_bad_binary_bodies_get_400(client: httpx.Client, digits_mlp: SampleModel) -> None:
    x = digits_mlp.golden.inputs[:2]
    body, headers = binary_request({"input": x})
    header_len = int(headers["Inference-Header-Content-Length"])
    truncated = client.post(INFER, content=body[:-5], headers=headers)
    _error(truncated, 400, "binary data truncated")
    bad_size = body.replace(b'"binary_data_size": 512', b'"binary_data_size": 500')
    _error(client.post(INFER, content=bad_size, headers=headers), 400, "needs 512 bytes")
    _error(client.post(INFER, content=body + b"extra", headers=headers), 400, "after the declared tensors")
    _error(client.post(INFER, content=body, headers={**headers, "Inference-Header-Content-Length": "abc"}),
           400, "decimal byte count")
    _error(client.post(INFER, content=body, headers={**headers, "Inference-Header-Content-Length": "0"}),
           400, "between 1 and the body size")
    _error(client.post(INFER, content=body, headers={**headers,
                                                     "Inference-Header-Content-Length": str(len(body) + 1)}), 400)
    _error(client.post(INFER, content=body, headers={**headers,
                                                     "Inference-Header-Content-Length": str(header_len - 3)}),
           400, "not valid JSON")
    # binary input without the header: the JSON parser sees the raw bytes
    _error(client.post(INFER, content=body, headers={"Content-Type": "application/octet-stream"}), 400)
    # the declared size fits but the data ends early (the body is cut inside the tensor)
    cut = body[: header_len + 100]
    _error(client.post(INFER, content=cut, headers=headers), 400, "truncated")


def test_huge_body_gets_413_and_huge_headers_get_4xx(client: httpx.Client, digits_mlp: SampleModel) -> None:
    _error(client.post(INFER, content=b"x" * (9 * 1024 * 1024), headers={"Content-Type": "application/json"}),
           413, "exceeds the limit")
    r = client.post(INFER, content=b"{}", headers={"X-Junk": "y" * 20000})
    assert 400 <= r.status_code < 500
    # after all that garbage the server still answers correctly
    x = digits_mlp.golden.inputs[:1]
    ok = client.post(INFER, json=json_request({"input": x}))
    assert ok.status_code == 200


def test_chunked_body_over_the_limit_gets_413(mlp_server: BackgroundServer) -> None:
    def chunks():  # no Content-Length: the limit must hold while reading
        for _ in range(10):
            yield b"x" * (1024 * 1024)

    with httpx.Client(base_url=mlp_server.url, timeout=10.0) as c:
        r = c.post(INFER, content=chunks(), headers={"Content-Type": "application/json"})
    _error(r, 413)


def test_datatypes_round_trip_through_an_identity_model(tmp_path, digits_mlp: SampleModel) -> None:
    """Every datatype the runtimes support goes in and comes back bit-exact, JSON and binary."""
    import onnx
    from onnx import TensorProto, helper

    types = {"BOOL": TensorProto.BOOL, "UINT8": TensorProto.UINT8, "INT8": TensorProto.INT8,
             "INT16": TensorProto.INT16, "UINT16": TensorProto.UINT16, "INT32": TensorProto.INT32,
             "INT64": TensorProto.INT64, "FP16": TensorProto.FLOAT16, "FP32": TensorProto.FLOAT,
             "FP64": TensorProto.DOUBLE, "UINT32": TensorProto.UINT32, "UINT64": TensorProto.UINT64}
    nodes, inputs, outputs = [], [], []
    for name, t in types.items():
        inputs.append(helper.make_tensor_value_info(f"in_{name}", t, [None, 3]))
        outputs.append(helper.make_tensor_value_info(f"out_{name}", t, [None, 3]))
        nodes.append(helper.make_node("Identity", [f"in_{name}"], [f"out_{name}"]))
    model = portable_model(helper.make_graph(nodes, "identity", inputs, outputs))
    path = tmp_path / "identity.onnx"
    onnx.save(model, str(path))
    srv = start_server(max_batch_size=8)
    try:
        srv.call(srv.models.swap("identity", load_session(path), "1"))
        rng = np.random.default_rng(0)
        feeds = {
            "in_BOOL": np.array([[True, False, True]]),
            "in_UINT8": np.array([[0, 7, 255]], np.uint8), "in_INT8": np.array([[-128, 0, 127]], np.int8),
            "in_INT16": np.array([[-32768, 1, 32767]], np.int16),
            "in_UINT16": np.array([[0, 1, 65535]], np.uint16),
            "in_INT32": np.array([[-(2**31), 5, 2**31 - 1]], np.int32),
            "in_INT64": np.array([[-(2**63), 5, 2**63 - 1]], np.int64),
            "in_UINT32": np.array([[0, 5, 2**32 - 1]], np.uint32),
            "in_UINT64": np.array([[0, 5, 2**64 - 1]], np.uint64),
            "in_FP16": rng.standard_normal((1, 3)).astype(np.float16),
            "in_FP32": rng.standard_normal((1, 3)).astype(np.float32),
            "in_FP64": rng.standard_normal((1, 3)),
        }
        meta = httpx.get(srv.url + "/v2/models/identity").json()
        assert {i["datatype"] for i in meta["inputs"]} == set(types)
        for binary in (True, False):
            if binary:
                body, headers = binary_request(feeds)
                r = httpx.post(srv.url + "/v2/models/identity/infer", content=body, headers=headers)
            else:
                r = httpx.post(srv.url + "/v2/models/identity/infer", json=json_request(feeds))
            assert r.status_code == 200, r.text
            _, outs = parse_response(r.content, r.headers)
            for name, array in feeds.items():
                got = outs["out_" + name[3:]]
                assert got.dtype == array.dtype and np.array_equal(got, array), name
        # an integer out of range and a float for an integer input are refused, not wrapped or truncated
        bad = json_request({**feeds})
        for item in bad["inputs"]:
            if item["name"] == "in_INT8":
                item["data"] = [1, 2, 300]
        _error(httpx.post(srv.url + "/v2/models/identity/infer", json=bad), 400, "outside the range")
        for item in bad["inputs"]:
            if item["name"] == "in_INT8":
                item["data"] = [1.5, 2, 3]
        _error(httpx.post(srv.url + "/v2/models/identity/infer", json=bad), 400, "must be integers")
    finally:
        srv.stop()


def test_tritonclient_works_unchanged(mlp_server: BackgroundServer, digits_mlp: SampleModel) -> None:
    tritonclient_http = pytest.importorskip("tritonclient.http", reason="needs tritonclient[http] (dev extra)")
    url = mlp_server.url.removeprefix("http://")
    client = tritonclient_http.InferenceServerClient(url=url)
    try:
        assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("digits")
        meta = client.get_model_metadata("digits")
        assert meta["inputs"][0]["shape"] == [-1, 64]
        x = digits_mlp.golden.inputs[:4]
        expected = reference(digits_mlp, x)
        for binary in (True, False):
            inp = tritonclient_http.InferInput("input", list(x.shape), "FP32")
            inp.set_data_from_numpy(x, binary_data=binary)
            out = tritonclient_http.InferRequestedOutput("probabilities", binary_data=binary)
            result = client.infer("digits", [inp], outputs=[out], request_id="r1")
            np.testing.assert_allclose(result.as_numpy("probabilities"), expected, rtol=1e-5, atol=1e-6)
            assert result.get_response()["model_version"] == "1"
        with pytest.raises(Exception, match="unknown model"):
            client.infer("missing", [inp])
    finally:
        client.close()
