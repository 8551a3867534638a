"""The image-repository writer, checked with python-tuf's own client (the reference implementation)."""

from __future__ import annotations

import hashlib
from datetime import timedelta
from pathlib import Path

import pytest
from tuf.api.exceptions import LengthOrHashMismatchError
from tuf.api.metadata import Metadata
from tuf.ngclient import Updater

from manifests.errors import RepositoryWriteError
from manifests.keyring import Keyring
from manifests.repository import ExpiryPolicy, ImageRepository
from manifests.store import LocalFolderStore, StoreFetcher
from tests.manifests.world import now_s, variant_custom


@pytest.fixture
def repo(tmp_path: Path) -> ImageRepository:
    r = ImageRepository(
        LocalFolderStore(tmp_path / "repo"),
        Keyring.create(tmp_path / "keys"),
        ExpiryPolicy(targets_s=30 * 86400.0, snapshot_s=3 * 86400.0, timestamp_s=3600.0),
    )
    r.initialize()
    return r


def updater(repo: ImageRepository, tmp_path: Path, name: str = "client") -> Updater:
    folder = tmp_path / name
    folder.mkdir(exist_ok=True)
    return Updater(
        str(folder),
        "store:///metadata/",
        target_dir=str(folder),
        target_base_url="store:///targets/",
        fetcher=StoreFetcher(repo.store),
        bootstrap=repo.keyring.root_history("image")[0],
    )


def test_python_tuf_client_downloads_and_verifies_a_published_target(
    repo: ImageRepository, tmp_path: Path
) -> None:
    model = b"onnx-bytes" * 1000
    t = repo.add_target("models/digits/1/ort-fp32.onnx", model, variant_custom("digits", "1", 4))
    assert t.sha256 == hashlib.sha256(model).hexdigest()
    assert repo.store.exists(t.store_key) and t.store_key.startswith("targets/models/digits/1/" + t.sha256)
    client = updater(repo, tmp_path)
    client.refresh()
    info = client.get_targetinfo("models/digits/1/ort-fp32.onnx")
    assert info is not None and info.custom["release_counter"] == 4 and info.custom["accuracy"] == "0.970000"
    path = client.download_target(info)
    assert Path(path).read_bytes() == model


def test_tampered_target_bytes_are_refused_by_the_client(repo: ImageRepository, tmp_path: Path) -> None:
    t = repo.add_target("models/digits/1/ort-fp32.onnx", b"a" * 100, variant_custom("digits", "1", 1))
    repo.store.write_bytes(t.store_key, b"b" * 100)
    client = updater(repo, tmp_path)
    info = client.get_targetinfo(t.name)
    assert info is not None
    with pytest.raises(LengthOrHashMismatchError):
        client.download_target(info)


def test_versions_consistent_snapshots_and_per_role_expiry(repo: ImageRepository) -> None:
    repo.add_target("models/digits/1/ort-fp32.onnx", b"1", variant_custom("digits", "1", 1))
    repo.add_target("models/digits/2/ort-fp32.onnx", b"2", variant_custom("digits", "2", 1))
    store = repo.store
    for key in (
        "metadata/1.root.json",
        "metadata/1.targets.json",
        "metadata/2.targets.json",
        "metadata/3.targets.json",
        "metadata/3.snapshot.json",
        "metadata/timestamp.json",
    ):
        assert store.exists(key), key
    assert Metadata.from_bytes(store.read_bytes("metadata/1.root.json")).signed.consistent_snapshot
    ts, snap, targets = repo.timestamp().signed, repo.snapshot().signed, repo.targets().signed
    assert (ts.version, snap.version, targets.version) == (3, 3, 3)
    now = now_s()
    assert timedelta(minutes=59) < ts.expires - now <= timedelta(hours=1)
    assert timedelta(days=2.9) < snap.expires - now <= timedelta(days=3)
    assert timedelta(days=29.9) < targets.expires - now <= timedelta(days=30)
    assert repo.expiring_within(2 * 3600.0) == ["timestamp"]
    repo.refresh_timestamp()
    assert repo.timestamp().signed.version == 4 and repo.snapshot().signed.version == 3
    # Old versions stay readable: a device mid-refresh still finds what its timestamp named.
    assert Metadata.from_bytes(store.read_bytes("metadata/2.targets.json")).signed.version == 2


def test_release_is_one_targets_version_and_remove_unlists(repo: ImageRepository) -> None:
    from manifests.repository import NewTarget

    repo.add_targets(
        [NewTarget(f"models/m/1/{v}", v.encode(), variant_custom("m", "1", 1)) for v in ("a", "b")]
    )
    assert repo.targets().signed.version == 2
    repo.remove_targets(["models/m/1/a"])
    assert [t.name for t in repo.signed_targets()] == ["models/m/1/b"]
    with pytest.raises(RepositoryWriteError):
        repo.remove_targets(["models/m/1/a"])


@pytest.mark.parametrize(
    "name", ["../x", "/abs/path", "models/m/1/../../x", "models/m/1/a\\b", "models/m/1/a/b"]
)
def test_writer_refuses_names_that_escape(repo: ImageRepository, name: str) -> None:
    with pytest.raises(RepositoryWriteError, match="target_name_invalid"):
        repo.add_target(name, b"x", variant_custom("m", "1", 1))
    assert repo.targets().signed.version == 1


@pytest.mark.parametrize(
    ("custom", "words"),
    [
        (variant_custom("m", "2", 1), "differ from the name"),
        (variant_custom("m", "1", -1), "release_counter"),
        (variant_custom("m", "1", 1, runtime="tflite"), "runtime"),
        (variant_custom("m", "1", 1, precision="fp64"), "precision"),
        (variant_custom("m", "1", 1, accuracy="high"), "accuracy"),
        (variant_custom("m", "1", 1, extra={"nested": 1}), "flat list"),
    ],
)
def test_writer_refuses_incomplete_custom_fields(
    repo: ImageRepository, custom: dict[str, object], words: str
) -> None:
    with pytest.raises(RepositoryWriteError, match=words):
        repo.add_target("models/m/1/x.onnx", b"x", custom)


def test_float_accuracy_is_stored_as_decimal_string(repo: ImageRepository) -> None:
    t = repo.add_target("models/m/1/x.onnx", b"x", variant_custom("m", "1", 1, accuracy=0.9731))
    assert t.custom["accuracy"] == "0.973100" and t.accuracy == pytest.approx(0.9731)


def test_local_store_refuses_keys_outside_its_folder(tmp_path: Path) -> None:
    store = LocalFolderStore(tmp_path / "s")
    for key in ("../x", "/etc/passwd", "a/../../x", "a\\b", "", "a//b"):
        with pytest.raises(ValueError):
            store.write_bytes(key, b"x")
    assert not (tmp_path / "x").exists()


def test_writer_continues_after_restart(repo: ImageRepository) -> None:
    repo.add_target("models/m/1/x.onnx", b"x", variant_custom("m", "1", 1))
    again = ImageRepository(repo.store, repo.keyring)
    again.initialize()  # idempotent
    again.add_target("models/m/2/x.onnx", b"y", variant_custom("m", "2", 1))
    assert {t.name for t in again.signed_targets()} == {"models/m/1/x.onnx", "models/m/2/x.onnx"}
