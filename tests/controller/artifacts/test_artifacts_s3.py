"""S3ArtifactStore against a real S3 server (SeaweedFS, signatures enforced): upload, Range GET,
presigned GET/PUT (tampering refused, PUT bound to the declared length), multipart for a large stream, limits and cleanup."""

from __future__ import annotations

import http.client
import io
import os
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from agent.capture import HttpObjectPut, UrlExpired
from controller.artifacts import (
    ArtifactNotFound,
    ArtifactTooLarge,
    RangeNotSatisfiable,
    S3ArtifactStore,
    StoreUnavailable,
    store_from_url,
)
from controller.artifacts.s3 import MIN_PART_BYTES


def _store(s3: Any, **kwargs: Any) -> S3ArtifactStore:
    return S3ArtifactStore.connect(bucket=s3.bucket, endpoint_url=s3.url, access_key_id=s3.access_key,
                                   secret_access_key=s3.secret_key, prefix="fleet-a", **kwargs)


def _http(url: str, *, method: str = "GET", data: bytes | None = None, headers: dict[str, str] | None = None
          ) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_roundtrip_ranges_listing_and_delete(s3: Any) -> None:
    store = _store(s3)
    data = os.urandom(100_000)
    store.write_bytes("models/digits/1/onnxruntime-fp32.onnx", data)
    store.write_bytes("models/digits/1/golden.npz", b"golden")
    store.write_bytes("models/digits/10/x", b"other")
    assert store.read_bytes("models/digits/1/onnxruntime-fp32.onnx") == data
    assert store.size("models/digits/1/onnxruntime-fp32.onnx") == len(data)
    assert store.exists("models/digits/1/golden.npz") and not store.exists("models/digits/1/none")
    stream = store.open("models/digits/1/onnxruntime-fp32.onnx", start=5000, length=1234)
    try:
        assert stream.read() == data[5000:6234]
    finally:
        stream.close()
    tail = store.open("models/digits/1/onnxruntime-fp32.onnx", start=99_990)
    assert tail.read() == data[99_990:]
    tail.close()
    with pytest.raises(RangeNotSatisfiable):
        store.open("models/digits/1/onnxruntime-fp32.onnx", start=100_000, length=10)
    assert list(store.list("models/digits/1/")) == ["models/digits/1/golden.npz",
                                                     "models/digits/1/onnxruntime-fp32.onnx"]
    # the prefix keeps installations apart: the raw bucket holds fleet-a/...
    raw = s3.client().list_objects_v2(Bucket=s3.bucket)["Contents"]
    assert all(obj["Key"].startswith("fleet-a/") for obj in raw)
    assert store.delete_prefix("models/digits/1/") == 2
    assert list(store.list("models/")) == ["models/digits/10/x"]
    assert store.delete("models/digits/10/x") is True and store.delete("models/digits/10/x") is False
    with pytest.raises(ArtifactNotFound):
        store.read_bytes("models/digits/10/x")
    with pytest.raises(ArtifactNotFound):
        store.size("models/digits/10/x")


def test_presigned_get_and_put(s3: Any) -> None:
    store = _store(s3)
    store.write_bytes("samples/dev-1/a.npz", b"0123456789")
    url = store.presign_get("samples/dev-1/a.npz", expires_s=300)
    assert _http(url) == (200, b"0123456789")
    assert _http(url, headers={"Range": "bytes=2-4"}) == (206, b"234")
    anonymous = f"{s3.url}/{s3.bucket}/fleet-a/samples/dev-1/a.npz"
    assert _http(anonymous)[0] == 403
    store.write_bytes("samples/dev-2/a.npz", b"secret")
    assert _http(url.replace("dev-1", "dev-2"))[0] == 403  # the signature covers the key
    put_url = store.presign_put("samples/dev-1/b.npz", expires_s=300)
    status, _ = _http(put_url, method="PUT", data=b"captured sample",
                      headers={"Content-Type": "application/octet-stream"})
    assert status == 200
    assert store.read_bytes("samples/dev-1/b.npz") == b"captured sample"
    # a PUT URL for one key cannot write another
    tampered = put_url.replace("b.npz", "c.npz")
    status, _ = _http(tampered, method="PUT", data=b"x", headers={"Content-Type": "application/octet-stream"})
    assert status == 403 and not store.exists("samples/dev-1/c.npz")
    # nor can a GET URL be used to write
    status, _ = _http(url, method="PUT", data=b"x", headers={"Content-Type": "application/octet-stream"})
    assert status == 403 and store.read_bytes("samples/dev-1/a.npz") == b"0123456789"


def _raw_put(url: str, body: bytes | Iterator[bytes], *, content_length: int | None) -> int:
    """PUT with full control of the framing: a given Content-Length, or chunked when None."""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=10)
    try:
        headers = {"Content-Type": "application/octet-stream"}
        if content_length is not None:
            headers["Content-Length"] = str(content_length)
        conn.request("PUT", f"{parts.path}?{parts.query}", body=body, headers=headers,
                     encode_chunked=content_length is None)
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def test_presigned_put_bound_to_length(s3: Any) -> None:
    """SeaweedFS checks the signed Content-Length: only a body of exactly the declared size is stored."""
    store = _store(s3)
    key = "samples/dev-1/bound.npz"
    data = os.urandom(1000)
    url = store.presign_put(key, expires_s=300, content_length=len(data))
    signed_headers = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)["X-Amz-SignedHeaders"][0]
    assert "content-length" in signed_headers.split(";")
    assert _raw_put(url, data + b"!", content_length=len(data) + 1) == 403
    assert _raw_put(url, data[:-1], content_length=len(data) - 1) == 403
    assert _raw_put(url, os.urandom(5 * 1024 * 1024), content_length=5 * 1024 * 1024) == 403
    assert _raw_put(url, iter([data[:600], data[600:]]), content_length=None) == 403  # chunked: no length
    assert not store.exists(key)
    # the device's own uploader (urllib, Content-Length from the bytes) gets through unchanged
    HttpObjectPut(timeout_s=10).put(url, data, {"Content-Type": "application/octet-stream"})
    assert store.read_bytes(key) == data
    with pytest.raises(UrlExpired):  # a 403, which the uploader answers by asking for a fresh URL
        HttpObjectPut(timeout_s=10).put(url, data * 2, {"Content-Type": "application/octet-stream"})
    assert store.read_bytes(key) == data
    with pytest.raises(ValueError, match="content_length"):
        store.presign_put(key, expires_s=300, content_length=True)


def test_multipart_stream_and_limit(s3: Any) -> None:
    store = _store(s3, multipart_threshold_bytes=MIN_PART_BYTES, multipart_chunk_bytes=MIN_PART_BYTES)
    data = os.urandom(2 * MIN_PART_BYTES + 12_345)
    assert store.write_stream("uploads/big.onnx", io.BytesIO(data)) == len(data)
    head = s3.client().head_object(Bucket=s3.bucket, Key="fleet-a/uploads/big.onnx")
    assert head["ETag"].strip('"').endswith("-3")  # S3 marks multipart objects' ETags with the part count
    assert store.read_bytes("uploads/big.onnx") == data
    with pytest.raises(ArtifactTooLarge):
        store.write_stream("uploads/too-big.onnx", io.BytesIO(data), max_bytes=len(data) - 1)
    assert not store.exists("uploads/too-big.onnx")
    uploads = s3.client().list_multipart_uploads(Bucket=s3.bucket).get("Uploads", [])
    assert [u for u in uploads if u["Key"].endswith("too-big.onnx")] == []  # aborted, nothing orphaned


def test_wrong_secret_and_dead_endpoint(s3: Any) -> None:
    wrong = S3ArtifactStore.connect(bucket=s3.bucket, endpoint_url=s3.url, access_key_id=s3.access_key,
                                    secret_access_key="not-the-secret")
    with pytest.raises(StoreUnavailable):
        wrong.write_bytes("x", b"y")
    url_store = store_from_url(f"s3://{s3.bucket}/via-url", s3_endpoint_url=s3.url,
                               s3_access_key_id=s3.access_key, s3_secret_access_key=s3.secret_key)
    url_store.write_bytes("k", b"v")
    assert s3.client().get_object(Bucket=s3.bucket, Key="via-url/k")["Body"].read() == b"v"
    s3.stop()
    dead = S3ArtifactStore.connect(bucket=s3.bucket, endpoint_url=s3.url, access_key_id=s3.access_key,
                                   secret_access_key=s3.secret_key, connect_timeout_s=0.5)
    with pytest.raises(StoreUnavailable) as caught:
        dead.read_bytes("k")
    assert caught.value.retryable
