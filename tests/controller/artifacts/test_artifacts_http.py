"""The artifact HTTP router over a local store: Range, public prefixes, presigned GET/PUT, limits,
PUT URLs bound to an exact body length."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from controller.artifacts import LocalArtifactStore, UrlSigner
from controller.artifacts.http import artifact_router, parse_range

BASE = "http://testserver/artifacts"


class _Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> _Clock:
    return _Clock()


@pytest.fixture
def store(tmp_path: Path, clock: _Clock) -> LocalArtifactStore:
    return LocalArtifactStore(tmp_path / "a", signer=UrlSigner(b"k" * 32, BASE, clock=clock))


@pytest.fixture
def client(store: LocalArtifactStore) -> Iterator[TestClient]:
    app = FastAPI()
    app.include_router(
        artifact_router(store, signer=store.signer, public_prefixes=("repository/",), max_upload_bytes=1000),
        prefix="/artifacts",
    )
    with TestClient(app) as c:
        yield c


def _path(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}"


DATA = bytes(range(256)) * 8  # 2048 bytes


def test_public_prefix_full_and_ranges(store: LocalArtifactStore, client: TestClient) -> None:
    store.write_bytes("repository/targets/m.onnx", DATA)
    full = client.get("/artifacts/repository/targets/m.onnx")
    assert full.status_code == 200 and full.content == DATA
    assert full.headers["accept-ranges"] == "bytes"
    part = client.get("/artifacts/repository/targets/m.onnx", headers={"Range": "bytes=100-199"})
    assert part.status_code == 206 and part.content == DATA[100:200]
    assert part.headers["content-range"] == "bytes 100-199/2048"
    resume = client.get("/artifacts/repository/targets/m.onnx", headers={"Range": "bytes=2000-"})
    assert resume.status_code == 206 and resume.content == DATA[2000:]
    suffix = client.get("/artifacts/repository/targets/m.onnx", headers={"Range": "bytes=-10"})
    assert suffix.content == DATA[-10:]
    beyond = client.get("/artifacts/repository/targets/m.onnx", headers={"Range": "bytes=2048-"})
    assert beyond.status_code == 416 and beyond.headers["content-range"] == "bytes */2048"
    multi = client.get("/artifacts/repository/targets/m.onnx", headers={"Range": "bytes=0-1,5-6"})
    assert multi.status_code == 200 and multi.content == DATA
    head = client.head("/artifacts/repository/targets/m.onnx", headers={"Range": "bytes=0-9"})
    assert head.status_code == 206 and head.headers["content-length"] == "10" and head.content == b""
    assert client.get("/artifacts/repository/none").status_code == 404


def test_private_key_needs_presigned_get(store: LocalArtifactStore, client: TestClient, clock: _Clock) -> None:
    store.write_bytes("samples/dev-1/s.npz", DATA)
    assert client.get("/artifacts/samples/dev-1/s.npz").status_code == 403
    url = store.presign_get("samples/dev-1/s.npz", expires_s=60)
    assert url.startswith(BASE + "/samples/dev-1/s.npz?")
    ok = client.get(_path(url), headers={"Range": "bytes=0-3"})
    assert ok.status_code == 206 and ok.content == DATA[:4]
    # another key with the same signature, a changed expiry, or a PUT with a GET signature: refused
    store.write_bytes("samples/dev-2/s.npz", DATA)
    assert client.get(_path(url).replace("dev-1", "dev-2")).status_code == 403
    query = parse_qs(urlsplit(url).query)
    later = int(query["expires"][0]) + 3600
    assert client.get(f"/artifacts/samples/dev-1/s.npz?expires={later}&signature={query['signature'][0]}").status_code == 403
    assert client.put(_path(url), content=b"x").status_code == 403
    clock.now += 61
    assert client.get(_path(url)).status_code == 403


def test_presigned_put(store: LocalArtifactStore, client: TestClient) -> None:
    url = store.presign_put("samples/dev-1/new.npz", expires_s=60)
    put = client.put(_path(url), content=b"captured", headers={"Content-Type": "application/octet-stream"})
    assert put.status_code == 201, put.text
    assert store.read_bytes("samples/dev-1/new.npz") == b"captured"
    # no signature: no upload, not even under a public prefix
    assert client.put("/artifacts/repository/evil", content=b"x").status_code == 403
    assert not store.exists("repository/evil")
    # over the size limit, declared or streamed: 413 and nothing stored
    big = store.presign_put("samples/dev-1/big.npz", expires_s=60)
    assert client.put(_path(big), content=b"z" * 1001).status_code == 413

    def chunks() -> Iterator[bytes]:
        for _ in range(11):
            yield b"z" * 100

    assert client.put(_path(big), content=chunks()).status_code == 413
    assert not store.exists("samples/dev-1/big.npz")


def test_presigned_put_bound_to_length(store: LocalArtifactStore, client: TestClient) -> None:
    key = "samples/dev-1/bound.npz"
    url = store.presign_put(key, expires_s=60, content_length=100)
    assert parse_qs(urlsplit(url).query)["length"] == ["100"]
    octets = {"Content-Type": "application/octet-stream"}
    # one byte more or less, declared or streamed (chunked, no Content-Length): refused, nothing kept
    assert client.put(_path(url), content=b"x" * 101, headers=octets).status_code == 413
    assert client.put(_path(url), content=b"x" * 99, headers=octets).status_code == 400
    assert client.put(_path(url), content=b"", headers=octets).status_code == 400

    def chunks(count: int) -> Iterator[bytes]:
        for _ in range(count):
            yield b"y" * 10

    assert client.put(_path(url), content=chunks(11), headers=octets).status_code == 413
    assert client.put(_path(url), content=chunks(9), headers=octets).status_code == 400
    assert not store.exists(key)
    # the length is inside the MAC: editing or dropping it breaks the URL
    assert client.put(_path(url).replace("length=100", "length=101"), content=b"x" * 101).status_code == 403
    assert client.put(_path(url).replace("length=100&", ""), content=b"x" * 101).status_code == 403
    assert client.put(_path(url).replace("length=100", "length=1e3"), content=b"x" * 100).status_code == 403
    assert not store.exists(key)
    # exactly the declared length, sent at once or chunked: stored
    assert client.put(_path(url), content=b"x" * 100, headers=octets).status_code == 201
    assert store.read_bytes(key) == b"x" * 100
    assert client.put(_path(url), content=chunks(10), headers=octets).status_code == 201
    assert store.read_bytes(key) == b"y" * 100
    # an unbound URL signed before keeps its old form and meaning
    assert "length=" not in store.presign_put(key, expires_s=60)
    with pytest.raises(ValueError, match="content_length"):
        store.presign_put(key, expires_s=60, content_length=-1)


def test_bad_key_is_400(client: TestClient) -> None:
    assert client.get("/artifacts/repository/.hidden").status_code == 400
    assert client.get("/artifacts/repository/a%2F..%2F..%2Fetc").status_code in (400, 404)


def test_parse_range() -> None:
    assert parse_range(None, 10) is None
    assert parse_range("bytes=0-0", 10) == (0, 1)
    assert parse_range("bytes=5-100", 10) == (5, 5)
    assert parse_range("bytes=-3", 10) == (7, 3)
    assert parse_range("bytes=-30", 10) == (0, 10)
    assert parse_range("items=0-1", 10) is None
    assert parse_range("bytes=5-1", 10) is None
    with pytest.raises(ValueError):
        parse_range("bytes=10-", 10)


def test_signer_rejects_short_secret() -> None:
    with pytest.raises(ValueError):
        UrlSigner(b"short", BASE)
