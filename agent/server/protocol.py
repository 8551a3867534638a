"""Open Inference Protocol (KServe v2 REST) codec: bytes in, validated numpy tensors out, and back.

Pure functions over bytes and TensorSpecs; no sockets, no sessions. Covers JSON tensors and the
binary tensor data extension: the body starts with a JSON header of `Inference-Header-Content-Length`
bytes, followed by the raw little-endian bytes of every input whose `parameters.binary_data_size` is
set, in the order they are listed. Responses use the same layout for outputs asked for in binary
(`outputs[i].parameters.binary_data` or the request-wide `parameters.binary_data_output`).

Everything from the wire is checked before it becomes an array: JSON structure, names, datatypes
(no silent conversion: a string, a float for an INT32 input or an out-of-range integer is an
error), shapes against the model (fixed dimensions must match, -1 accepts any size), element counts
against `data` and against binary sizes, and that the binary section is exactly as long as declared.
Every failure is a RequestError with a message naming the tensor and what was expected.

Deliberately unsupported: BYTES tensors, the classification extension and shared-memory
extensions (they answer 400 with a message saying so).
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from agent.runtime import DATATYPES, TensorSpec
from agent.server.errors import RequestError

HEADER_LENGTH = "Inference-Header-Content-Length"
# The wire is little-endian; built once, not per tensor (dtype construction shows on a 12 µs model).
_LITTLE_ENDIAN = {name: dtype.newbyteorder("<") for name, dtype in DATATYPES.items()}
_NATIVE_LITTLE = sys.byteorder == "little"
_INT_KINDS = "iu"


@dataclass(frozen=True)
class OutputRequest:
    name: str
    binary: bool | None  # None: the output did not say; the request-wide binary_data_output decides


@dataclass(frozen=True)
class InferRequest:
    """A decoded, validated request. `rows` is the batch dimension when the model is batched."""

    id: str | None
    inputs: Mapping[str, np.ndarray]
    rows: int | None
    outputs: tuple[OutputRequest, ...] | None  # None: every model output, as binary_default says
    binary_default: bool


def _shape(raw: Any, where: str) -> tuple[int, ...]:
    if not isinstance(raw, list) or len(raw) > 32:
        raise RequestError(f"{where}: 'shape' must be a list of at most 32 dimensions")
    if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in raw):
        raise RequestError(f"{where}: 'shape' must hold non-negative integers, got {raw}")
    return tuple(raw)


def _parameters(raw: Any, where: str) -> Mapping[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise RequestError(f"{where}: 'parameters' must be an object")
    if "shared_memory_region" in raw:
        raise RequestError(f"{where}: the shared-memory extension is not supported")
    if "classification" in raw:
        raise RequestError(f"{where}: the classification extension is not supported")
    return raw


def _flag(params: Mapping[str, Any], key: str, where: str, default: bool) -> bool:
    value = params.get(key, default)
    if not isinstance(value, bool):
        raise RequestError(f"{where}: parameter {key!r} must be true or false, got {value!r}")
    return value


def _from_json_data(data: Any, dtype: np.dtype[Any], shape: tuple[int, ...], where: str) -> np.ndarray:
    if not isinstance(data, list):
        raise RequestError(f"{where}: 'data' must be a list (or use binary_data_size)")
    try:
        raw = np.asarray(data)
    except (ValueError, TypeError, RecursionError) as e:
        raise RequestError(f"{where}: 'data' is not a regular array of numbers: {e}") from None
    kind = raw.dtype.kind
    if raw.size == 0:
        kind = dtype.kind  # an empty list carries no type; the count check below decides
    elif dtype.kind == "b":
        if kind != "b":
            raise RequestError(f"{where}: BOOL data must be true/false, got {raw.dtype} values")
    elif dtype.kind in _INT_KINDS:
        if kind not in _INT_KINDS:
            # numpy turns integers beyond int64 (valid UINT64 values) into floats: look at the leaves.
            leaves = np.asarray(data, dtype=object).ravel().tolist()
            if not all(type(v) is int for v in leaves):
                raise RequestError(f"{where}: {dtype} data must be integers, got {raw.dtype} values")
            raw = np.asarray(leaves, dtype=object)
        info = np.iinfo(dtype)
        if int(raw.min()) < info.min or int(raw.max()) > info.max:
            raise RequestError(f"{where}: values outside the range of {dtype} [{info.min}, {info.max}]")
    elif kind not in "biuf":
        raise RequestError(f"{where}: data must be numbers, got {raw.dtype} values")
    count = math.prod(shape)
    if raw.size != count:
        raise RequestError(f"{where}: shape {list(shape)} needs {count} elements, 'data' has {raw.size}")
    return raw.astype(dtype, copy=False).reshape(shape)


def check_against_specs(
    tensors: Mapping[str, np.ndarray], specs: Sequence[TensorSpec], batched: bool
) -> int | None:
    """Check names, datatypes and shapes against the model; return the row count when batched."""
    expected = {s.name for s in specs}
    missing = sorted(expected - tensors.keys())
    if missing:
        raise RequestError(f"missing input(s) {missing}; the model takes {sorted(expected)}")
    unknown = sorted(tensors.keys() - expected)
    if unknown:
        raise RequestError(f"unknown input(s) {unknown}; the model takes {sorted(expected)}")
    rows: int | None = None
    for spec in specs:
        array = tensors[spec.name]
        if array.dtype != spec.dtype:
            got = next((n for n, d in DATATYPES.items() if d == array.dtype), str(array.dtype))
            raise RequestError(f"input {spec.name!r}: expected datatype {spec.datatype}, got {got}")
        shape = array.shape
        if len(shape) != len(spec.shape) or any(
            want != -1 and want != got for want, got in zip(spec.shape, shape, strict=True)
        ):
            raise RequestError(f"input {spec.name!r}: expected shape {list(spec.shape)}, got {list(shape)}")
        if batched:
            if shape[0] == 0:
                raise RequestError(f"input {spec.name!r}: the batch dimension must be at least 1")
            if rows is None:
                rows = shape[0]
            elif rows != shape[0]:
                raise RequestError(f"inputs disagree on the batch size: {rows} and {shape[0]}")
    return rows


def decode_infer_request(
    body: bytes, header_length: int | None, specs: Sequence[TensorSpec], outputs: Sequence[TensorSpec],
    batched: bool,
) -> InferRequest:
    """Decode an infer body (JSON, or JSON header + binary tensors) and validate it against the model."""
    if header_length is None:
        header_length = len(body)
    elif not 0 < header_length <= len(body):
        raise RequestError(
            f"{HEADER_LENGTH} must be between 1 and the body size {len(body)}, got {header_length}"
        )
    try:
        doc = json.loads(memoryview(body)[:header_length].tobytes() if header_length < len(body) else body)
    except (ValueError, RecursionError) as e:
        raise RequestError(f"request body is not valid JSON: {e}") from None
    if not isinstance(doc, dict):
        raise RequestError(f"request body must be a JSON object, got {type(doc).__name__}")
    request_id = doc.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise RequestError("'id' must be a string")
    params = _parameters(doc.get("parameters"), "request")
    binary_default = _flag(params, "binary_data_output", "request", False)
    raw_inputs = doc.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise RequestError("'inputs' must be a non-empty list")
    if len(raw_inputs) > len(specs):
        raise RequestError(f"got {len(raw_inputs)} inputs; the model takes {len(specs)}")

    tensors: dict[str, np.ndarray] = {}
    offset = header_length
    for i, item in enumerate(raw_inputs):
        if not isinstance(item, dict):
            raise RequestError(f"inputs[{i}] must be an object")
        name = item.get("name")
        if not isinstance(name, str):
            raise RequestError(f"inputs[{i}]: 'name' must be a string")
        where = f"input {name!r}"
        if name in tensors:
            raise RequestError(f"{where} is given twice")
        datatype = item.get("datatype")
        if not isinstance(datatype, str) or datatype not in DATATYPES:
            raise RequestError(f"{where}: unsupported datatype {datatype!r}; supported: {sorted(DATATYPES)}")
        dtype = DATATYPES[datatype]
        shape = _shape(item.get("shape"), where)
        p = _parameters(item.get("parameters"), where)
        size = p.get("binary_data_size")
        if size is None:
            tensors[name] = _from_json_data(item.get("data"), dtype, shape, where)
            continue
        if "data" in item:
            raise RequestError(f"{where}: give either 'data' or binary_data_size, not both")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise RequestError(f"{where}: binary_data_size must be a non-negative integer, got {size!r}")
        needed = math.prod(shape) * dtype.itemsize
        if size != needed:
            raise RequestError(f"{where}: shape {list(shape)} of {datatype} needs {needed} bytes, "
                               f"binary_data_size says {size}")
        if offset + size > len(body):
            raise RequestError(
                f"{where}: binary data truncated: needs bytes {offset}..{offset + size}, body has {len(body)}"
            )
        tensors[name] = np.frombuffer(body, dtype=_LITTLE_ENDIAN[datatype], count=math.prod(shape),
                                      offset=offset).reshape(shape)
        offset += size
    if offset != len(body):
        raise RequestError(f"body has {len(body) - offset} bytes after the declared tensors")

    rows = check_against_specs(tensors, specs, batched)
    return InferRequest(request_id, tensors, rows, _requested_outputs(doc.get("outputs"), outputs), binary_default)


def _requested_outputs(raw: Any, specs: Sequence[TensorSpec]) -> tuple[OutputRequest, ...] | None:
    if raw is None:
        return None
    if not isinstance(raw, list):
        raise RequestError("'outputs' must be a list")
    names = {s.name for s in specs}
    requested: list[OutputRequest] = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise RequestError(f"outputs[{i}] must be an object with a string 'name'")
        name = item["name"]
        if name not in names:
            raise RequestError(f"unknown output {name!r}; the model gives {sorted(names)}")
        p = _parameters(item.get("parameters"), f"output {name!r}")
        binary = p.get("binary_data")
        if binary is not None and not isinstance(binary, bool):
            raise RequestError(f"output {name!r}: binary_data must be true or false")
        requested.append(OutputRequest(name, binary))
    return tuple(requested)


def encode_infer_response(
    model_name: str,
    model_version: str,
    request: InferRequest,
    results: Mapping[str, np.ndarray],
    parameters: Mapping[str, Any] | None = None,
) -> tuple[bytes, int | None]:
    """The response body, and the JSON header length when binary outputs follow it (else None)."""
    if request.outputs is None:
        chosen: Iterable[tuple[str, bool]] = ((n, request.binary_default) for n in results)
    else:
        chosen = ((o.name, request.binary_default if o.binary is None else o.binary) for o in request.outputs)
    described: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for name, binary in chosen:
        array = results.get(name)
        if array is None:
            raise RequestError(f"output {name!r} is not produced by version {model_version} of {model_name!r}")
        entry: dict[str, Any] = {
            "name": name,
            "datatype": _datatype(array),
            "shape": list(array.shape),
        }
        if binary:
            blob = (array if array.dtype.byteorder in "=<|" and _NATIVE_LITTLE else array.astype(
                array.dtype.newbyteorder("<"))).tobytes()  # tobytes() is C order whatever the strides
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = array.ravel().tolist()
        described.append(entry)
    doc: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if request.id is not None:
        doc["id"] = request.id
    if parameters:
        doc["parameters"] = dict(parameters)
    doc["outputs"] = described
    header = json.dumps(doc, separators=(",", ":")).encode()
    if not blobs:
        return header, None
    return b"".join([header, *blobs]), len(header)


def _datatype(array: np.ndarray) -> str:
    for name, dtype in DATATYPES.items():
        if dtype == array.dtype:
            return name
    raise ValueError(f"output dtype {array.dtype} has no protocol datatype")


def tensor_metadata(specs: Sequence[TensorSpec]) -> list[dict[str, Any]]:
    return [{"name": s.name, "datatype": s.datatype, "shape": list(s.shape)} for s in specs]


def error_body(message: str) -> bytes:
    return json.dumps({"error": message}).encode()
