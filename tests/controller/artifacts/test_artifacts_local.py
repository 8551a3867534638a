"""LocalArtifactStore: atomic writes, limits, listing, range reads, key safety."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from controller.artifacts import (
    ArtifactNotFound,
    ArtifactTooLarge,
    InvalidKey,
    LocalArtifactStore,
    PresignNotConfigured,
    RangeNotSatisfiable,
    store_from_url,
    validate_key,
)


@pytest.fixture
def store(tmp_path: Path) -> LocalArtifactStore:
    return LocalArtifactStore(tmp_path / "artifacts")


def test_write_read_replace(store: LocalArtifactStore) -> None:
    store.write_bytes("models/digits/1.0/onnxruntime-fp32.onnx", b"first")
    assert store.read_bytes("models/digits/1.0/onnxruntime-fp32.onnx") == b"first"
    store.write_bytes("models/digits/1.0/onnxruntime-fp32.onnx", b"second, longer")
    assert store.read_bytes("models/digits/1.0/onnxruntime-fp32.onnx") == b"second, longer"
    assert store.size("models/digits/1.0/onnxruntime-fp32.onnx") == len(b"second, longer")
    assert store.exists("models/digits/1.0/onnxruntime-fp32.onnx")
    assert not store.exists("models/digits/1.0/other")
    # nothing but the object itself is left in its folder (no temporary files)
    folder = store.path_of("models/digits/1.0/onnxruntime-fp32.onnx").parent
    assert os.listdir(folder) == ["onnxruntime-fp32.onnx"]


def test_missing_key_is_not_found(store: LocalArtifactStore) -> None:
    with pytest.raises(ArtifactNotFound):
        store.read_bytes("nope")
    with pytest.raises(ArtifactNotFound):
        store.size("nope")
    with pytest.raises(ArtifactNotFound):
        store.open("nope")
    store.write_bytes("dir/file", b"x")
    with pytest.raises(ArtifactNotFound):  # a folder is not an object
        store.read_bytes("dir")
    assert store.delete("nope") is False


@pytest.mark.parametrize(
    "key",
    ["", "/abs", "a//b", "../escape", "a/../../b", "a/./b", ".hidden", "a/.tmp", "back\\slash", "nul\x00",
     "sp ace", "trailing/", "x" * 1025],
)
def test_unsafe_keys_refused(store: LocalArtifactStore, key: str) -> None:
    with pytest.raises(InvalidKey):
        store.write_bytes(key, b"x")
    with pytest.raises(InvalidKey):
        validate_key(key)
    assert list(store.root.rglob("*")) == []


def test_stream_over_limit_leaves_nothing(store: LocalArtifactStore) -> None:
    store.write_bytes("uploads/model.onnx", b"previous")
    with pytest.raises(ArtifactTooLarge):
        store.write_stream("uploads/model.onnx", io.BytesIO(b"z" * 5000), max_bytes=4096)
    assert store.read_bytes("uploads/model.onnx") == b"previous"
    assert [p.name for p in store.path_of("uploads/model.onnx").parent.iterdir()] == ["model.onnx"]
    assert store.write_stream("uploads/model.onnx", io.BytesIO(b"y" * 4096), max_bytes=4096) == 4096


def test_ranges(store: LocalArtifactStore) -> None:
    data = bytes(range(256)) * 40
    store.write_bytes("blob", data)
    stream = store.open("blob", start=1000, length=300)
    try:
        assert stream.read() == data[1000:1300]
    finally:
        stream.close()
    stream = store.open("blob", start=len(data) - 5)
    assert stream.read(2) + stream.read() == data[-5:]
    stream.close()
    with pytest.raises(RangeNotSatisfiable):
        store.open("blob", start=len(data))


def test_list_and_delete_prefix(store: LocalArtifactStore) -> None:
    for key in ["models/a/1/x", "models/a/1/y", "models/a/10/x", "models/b/1/x", "repository/1.root.json"]:
        store.write_bytes(key, key.encode())
    assert list(store.list("models/a/1/")) == ["models/a/1/x", "models/a/1/y"]
    assert list(store.list("models/a/1")) == ["models/a/1/x", "models/a/1/y", "models/a/10/x"]
    assert len(list(store.list())) == 5
    assert list(store.list("nothing/here/")) == []
    assert store.delete_prefix("models/a/1/") == 2
    assert not store.path_of("models/a/1/x").parent.exists()
    assert list(store.list("models/")) == ["models/a/10/x", "models/b/1/x"]
    with pytest.raises(ValueError):
        store.delete_prefix("")


def test_presign_needs_signer(store: LocalArtifactStore) -> None:
    with pytest.raises(PresignNotConfigured):
        store.presign_get("x", expires_s=60)


def test_store_from_url(tmp_path: Path) -> None:
    local = store_from_url(f"file://{tmp_path}/via-url")
    assert isinstance(local, LocalArtifactStore)
    local.write_bytes("k", b"v")
    assert (tmp_path / "via-url" / "k").read_bytes() == b"v"
    with pytest.raises(ValueError):
        store_from_url("ftp://host/x")
    with pytest.raises(ValueError):
        store_from_url("s3:///no-bucket")
