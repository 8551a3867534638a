"""Offline release key: with no private targets key on the controller a build ends `awaiting_signature`;
targets metadata signed elsewhere is checked (signer, version, bytes) before anything is published."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from tuf.api.metadata import Metadata, Targets

from controller.artifacts import LocalArtifactStore
from controller.registry.repository import REPOSITORY_PREFIX, PrefixedStore
from controller.sample_models import SampleModel
from controller.settings import Settings
from manifests.keyring import Keyring
from manifests.repository import ImageRepository
from tests.controller.conftest import ControllerEnv, start_env


def _offline_keys(keyring_dir: Path, tmp_path: Path) -> Path:
    """A copy of the keyring without the private targets key: what the online controller holds."""
    online = tmp_path / "online-keys"
    shutil.copytree(keyring_dir, online)
    for keyid in Keyring(keyring_dir).root("image").signed.roles["targets"].keyids:
        (online / "private" / f"{keyid}.pem").unlink()
    return online


def _sign(pending: dict[str, Any], keyring: Keyring, role: str = "targets") -> bytes:
    md = Metadata[Targets].from_dict(json.loads(json.dumps(pending)))
    for signer in keyring.signers(role):
        md.sign(signer, append=True)
    return bytes(md.to_bytes())


def _wait_status(env: ControllerEnv, path: str, statuses: set[str], timeout_s: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        body: dict[str, Any] = env.client.get(path, headers=env.auth("viewer")).json()
        if body["status"] in statuses:
            return body
        time.sleep(0.1)
    raise AssertionError(f"{path} did not reach {statuses} within {timeout_s} s")


def test_offline_release_key_workflow(controller_settings: Settings, keyring_dir: Path, tmp_path: Path,
                                      digits_mlp: SampleModel) -> None:
    settings = controller_settings.model_copy(update={
        "keys_dir": _offline_keys(keyring_dir, tmp_path), "build_variants": ("onnxruntime-fp32",),
        "build_latency_runs": 3})
    store = LocalArtifactStore(Path(settings.resolved_artifact_url.removeprefix("file://")))
    # The repository is created once where the release key is (`edgefleet repository init`).
    ImageRepository(PrefixedStore(store, REPOSITORY_PREFIX), Keyring(keyring_dir)).initialize()
    release_key = Keyring(keyring_dir)

    with start_env(settings) as env:
        files = {"model": ("m.onnx", digits_mlp.path.read_bytes()), "golden": ("g.npz", digits_mlp.golden_path.read_bytes())}
        r = env.client.post("/api/v1/models", files=files, data={"name": "digits-mlp", "version": "3.0"},
                            headers=env.auth("operator"))
        assert r.status_code == 202, r.text
        release = _wait_status(env, "/api/v1/models/digits-mlp/3.0", {"awaiting_signature", "published", "failed"})
        assert release["status"] == "awaiting_signature", release
        repo = ImageRepository(PrefixedStore(store, REPOSITORY_PREFIX), release_key)
        assert repo.signed_targets() == ()  # nothing listed before the release key signs

        pending = env.client.get("/api/v1/repository/targets/pending", headers=env.auth("operator")).json()
        assert pending["signatures"] == [] and pending["signed"]["version"] == 2
        assert set(pending["signed"]["targets"]) == {"models/digits-mlp/3.0/onnxruntime-fp32.onnx",
                                                     "models/digits-mlp/3.0/golden.npz"}

        def put(data: bytes) -> Any:
            return env.client.put("/api/v1/repository/targets", content=data, headers=env.auth("admin"))

        # Signed by the wrong role's key, or edited after signing: refused, nothing published.
        wrong = put(_sign(pending, Keyring(keyring_dir), role="snapshot"))
        assert wrong.status_code == 422 and "release key" in wrong.json()["error"]["message"]
        good = _sign(pending, release_key)
        edited = json.loads(good)
        edited["signed"]["targets"]["models/digits-mlp/3.0/onnxruntime-fp32.onnx"]["length"] += 1
        assert put(json.dumps(edited).encode()).status_code == 422
        assert put(b"{not json").status_code == 422
        assert repo.signed_targets() == ()
        assert env.client.put("/api/v1/repository/targets", content=good, headers=env.auth("operator")).status_code == 403

        r = put(good)
        assert r.status_code == 200, r.text
        assert r.json() == {"targets_version": 2, "published": ["digits-mlp 3.0"]}
        assert {t.name for t in repo.signed_targets()} == set(pending["signed"]["targets"])
        assert repo.snapshot().signed.meta["targets.json"].version == 2
        release = env.client.get("/api/v1/models/digits-mlp/3.0", headers=env.auth("viewer")).json()
        assert release["status"] == "published"
        assert put(good).status_code == 409  # a replay of the same version
        assert env.client.get("/api/v1/repository/targets/pending", headers=env.auth("operator")).status_code == 404
