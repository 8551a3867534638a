"""Key files, root metadata and rotation, and the `edgefleet keys` commands."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from tuf.api.metadata import Metadata, Root
from typer.testing import CliRunner

from controller.keys_cli import app
from manifests.errors import KeyringError
from manifests.keyring import Keyring


def test_create_writes_private_keys_0600_and_roots_with_thresholds(tmp_path: Path) -> None:
    ring = Keyring.create(tmp_path / "k")
    private = tmp_path / "k" / "private"
    assert stat.S_IMODE(private.stat().st_mode) == 0o700
    files = list(private.iterdir())
    assert len(files) == 3 + 3 + 2  # root x3, targets/snapshot/timestamp, director-root, director
    assert all(stat.S_IMODE(f.stat().st_mode) == 0o600 for f in files)
    image = ring.root("image").signed
    assert image.roles["root"].threshold == 2 and len(image.roles["root"].keyids) == 3
    assert image.consistent_snapshot
    # Version 1 verifies itself with the threshold (python-tuf does the checking).
    md = ring.root("image")
    image.verify_delegate("root", md.signed_bytes, md.signatures)
    with pytest.raises(KeyringError, match="already holds"):
        Keyring.create(tmp_path / "k")


def test_rotating_root_is_signed_by_old_and_new_keys(tmp_path: Path) -> None:
    ring = Keyring.create(tmp_path / "k")
    v1 = ring.root("image")
    v2 = ring.rotate("root")
    assert v2.signed.version == 2
    assert set(v2.signed.roles["root"].keyids).isdisjoint(v1.signed.roles["root"].keyids)
    v1.signed.verify_delegate("root", v2.signed_bytes, v2.signatures)  # old threshold
    v2.signed.verify_delegate("root", v2.signed_bytes, v2.signatures)  # new threshold
    retired = {p.stem for p in (tmp_path / "k" / "retired").iterdir()}
    assert retired == set(v1.signed.roles["root"].keyids)
    assert len(ring.signers("root")) == 3


def test_group_readable_key_is_refused(tmp_path: Path) -> None:
    ring = Keyring.create(tmp_path / "k")
    keyid = ring.root("image").signed.roles["targets"].keyids[0]
    os.chmod(tmp_path / "k" / "private" / f"{keyid}.pem", 0o640)
    with pytest.raises(KeyringError, match="readable by others"):
        ring.signers("targets")


def test_threshold_above_key_count_is_refused(tmp_path: Path) -> None:
    with pytest.raises(KeyringError, match="threshold"):
        Keyring.create(tmp_path / "k", root_keys=2, root_threshold=3)


def test_cli_init_rotate_show(tmp_path: Path) -> None:
    runner = CliRunner()
    keys = tmp_path / "k"
    result = runner.invoke(app, ["init", str(keys), "--root-keys", "5", "--root-threshold", "3"])
    assert result.exit_code == 0, result.output
    assert (
        Metadata[Root]
        .from_bytes((keys / "image-root" / "1.root.json").read_bytes())
        .signed.roles["root"]
        .threshold
        == 3
    )
    repo = tmp_path / "repo"
    from manifests.repository import ImageRepository
    from manifests.store import LocalFolderStore

    ImageRepository(LocalFolderStore(repo), Keyring(keys)).initialize()
    result = runner.invoke(app, ["rotate", "timestamp", "--keys", str(keys), "--repo", str(repo)])
    assert result.exit_code == 0, result.output
    assert (repo / "metadata" / "2.root.json").is_file()
    ts = Metadata.from_bytes((repo / "metadata" / "timestamp.json").read_bytes())
    new_root = Keyring(keys).root("image").signed
    new_root.verify_delegate("timestamp", ts.signed_bytes, ts.signatures)
    result = runner.invoke(app, ["rotate", "director", "--keys", str(keys)])
    assert result.exit_code == 0 and (keys / "director-root" / "2.root.json").is_file()
    result = runner.invoke(app, ["show", "--keys", str(keys)])
    assert result.exit_code == 0 and "image root v2" in result.output and "director root v2" in result.output
    result = runner.invoke(app, ["rotate", "nobody", "--keys", str(keys)])
    assert result.exit_code == 1 and "unknown role" in result.output
