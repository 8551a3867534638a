"""Model registry over HTTP: upload → background build with visible progress → signed targets in the
image repository; bad input gets a clear 4xx and leaves nothing behind; failed builds clean up."""

from __future__ import annotations

import hashlib
import io
import time
from pathlib import Path
from typing import Any

import numpy as np

from controller.registry.repository import REPOSITORY_PREFIX, PrefixedStore
from controller.sample_models import SampleModel
from controller.settings import Settings
from manifests.keyring import Keyring
from manifests.repository import ImageRepository
from tests.controller.conftest import ControllerEnv, start_env


def _upload(env: ControllerEnv, model: bytes, golden: bytes, *, name: str = "digits-mlp",
            version: str = "1.0.0", **form: Any) -> Any:
    files = {"model": ("model.onnx", model, "application/octet-stream"),
             "golden": ("golden.npz", golden, "application/octet-stream")}
    data = {"name": name, "version": version, **{k: str(v) for k, v in form.items()}}
    return env.client.post("/api/v1/models", files=files, data=data, headers=env.auth("operator"))


def _wait_done(env: ControllerEnv, name: str, version: str, timeout_s: float = 240.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    seen_progress: set[float] = set()
    while time.monotonic() < deadline:
        body: dict[str, Any] = env.client.get(f"/api/v1/models/{name}/{version}", headers=env.auth("viewer")).json()
        seen_progress.add(body["progress"])
        if body["status"] in ("published", "failed"):
            body["_seen_progress"] = sorted(seen_progress)
            return body
        time.sleep(0.1)
    raise AssertionError(f"release {name} {version} did not finish within {timeout_s} s")


def _store_keys(env: ControllerEnv, prefix: str) -> list[str]:
    return list(env.ctx.store.list(prefix))


def test_upload_builds_measures_and_publishes_signed_targets(env: ControllerEnv, digits_mlp: SampleModel) -> None:
    model, golden = digits_mlp.path.read_bytes(), digits_mlp.golden_path.read_bytes()
    r = _upload(env, model, golden, min_accuracy=0.9, preprocessing="pixels 0..16, flattened 8x8")
    assert r.status_code == 202, r.text
    assert r.headers["Location"] == "/api/v1/models/digits-mlp/1.0.0"
    assert r.json()["status"] in ("queued", "building") and r.json()["release_counter"] == 1

    release = _wait_done(env, "digits-mlp", "1.0.0")
    assert release["status"] == "published", release["error"]
    assert release["progress"] == 1.0 and release["report"]["baseline"]["accuracy"] > 0.9
    variants = {v["variant_id"]: v for v in release["variants"]}
    assert {"onnxruntime-fp32", "onnxruntime-int8", "openvino-fp32", "openvino-fp16", "tensorrt-fp16"} <= set(variants)
    fp32 = variants["onnxruntime-fp32"]
    assert fp32["offered"] and fp32["status"] == "ready" and fp32["accuracy"] > 0.9 and fp32["agreement"] > 0.99
    assert fp32["latency_ms"] is not None and fp32["figures"]["samples"] == len(digits_mlp.golden.labels)

    # Every offered variant and the golden set are signed in the image repository with the same hashes.
    repo = ImageRepository(PrefixedStore(env.ctx.store, REPOSITORY_PREFIX), Keyring(env.settings.resolved_keys_dir))
    signed = {t.name: t for t in repo.signed_targets()}
    offered = [v for v in variants.values() if v["offered"]]
    assert offered
    for v in offered:
        target = signed[v["target_path"]]
        assert (target.sha256, target.length) == (v["sha256"], v["length"])
        assert target.custom["release_counter"] == 1 and target.custom["runtime"] == v["runtime"]
    for v in variants.values():
        if not v["offered"]:
            assert v["target_path"] == "" and all(not n.endswith(v["variant_id"]) for n in signed)
    assert "models/digits-mlp/1.0.0/golden.npz" in signed

    # Devices download targets over the public repository route; the bytes match the signed hash.
    t = signed[fp32["target_path"]]
    r = env.client.get(f"/artifacts/{REPOSITORY_PREFIX}{t.store_key}", headers={"Range": "bytes=0-"})
    assert r.status_code in (200, 206) and hashlib.sha256(r.content).hexdigest() == t.sha256

    # Listing and the duplicate check.
    listing = env.client.get("/api/v1/models?name=digits-mlp", headers=env.auth("viewer")).json()
    assert listing["total"] == 1 and listing["items"][0]["status"] == "published"
    dup = _upload(env, model, golden)
    assert dup.status_code == 409 and dup.json()["error"]["code"] == "conflict"
    # A published release cannot be deleted: devices may run it.
    assert env.client.delete("/api/v1/models/digits-mlp/1.0.0", headers=env.auth("operator")).status_code == 409


def test_bad_uploads_get_4xx_and_leave_nothing(env: ControllerEnv, digits_mlp: SampleModel,
                                               digits_cnn: SampleModel) -> None:
    model, golden = digits_mlp.path.read_bytes(), digits_mlp.golden_path.read_bytes()
    cases = [
        ("not-onnx", b"this is not an onnx model" * 10, golden, 422, "model"),
        ("mismatched-golden", model, digits_cnn.golden_path.read_bytes(), 422, "golden set"),
        ("garbage-golden", model, b"PK\x03\x04 not really a zip", 422, "golden set"),
        ("bad name!", model, golden, 422, None),
    ]
    for name, m, g, status, part in cases:
        r = _upload(env, m, g, name=name)
        assert r.status_code == status, (name, r.text)
        error = r.json()["error"]
        assert error["code"] == "invalid_input" and error["message"]
        if part is not None:
            assert error["details"]["part"] == part
    buf = io.BytesIO()
    np.savez(buf, labels=np.arange(3))
    r = _upload(env, model, buf.getvalue(), name="no-inputs")
    assert r.status_code == 422 and "inputs" in r.json()["error"]["message"]

    assert env.client.get("/api/v1/models", headers=env.auth("viewer")).json()["total"] == 0
    assert _store_keys(env, "uploads/") == [] and _store_keys(env, "builds/") == []


def test_oversized_upload_is_refused_before_anything_is_stored(controller_settings: Settings,
                                                                digits_mlp: SampleModel) -> None:
    model, golden = digits_mlp.path.read_bytes(), digits_mlp.golden_path.read_bytes()
    settings = controller_settings.model_copy(update={"max_model_bytes": len(model) - 1})
    with start_env(settings) as env:
        r = _upload(env, model, golden)
        assert r.status_code == 413 and r.json()["error"]["code"] == "too_large"
        assert env.client.get("/api/v1/models", headers=env.auth("viewer")).json()["total"] == 0
        assert _store_keys(env, "uploads/") == []


def test_failed_publish_marks_release_failed_and_cleans_up(controller_settings: Settings, tmp_path: Path,
                                                            digits_mlp: SampleModel) -> None:
    settings = controller_settings.model_copy(update={
        "keys_dir": tmp_path / "no-keys-here", "build_variants": ("onnxruntime-fp32",), "build_latency_runs": 3})
    with start_env(settings) as env:
        r = _upload(env, digits_mlp.path.read_bytes(), digits_mlp.golden_path.read_bytes(), version="2.0")
        assert r.status_code == 202
        release = _wait_done(env, "digits-mlp", "2.0")
        assert release["status"] == "failed" and "keyring" in release["error"]
        assert release["variants"] == []
        assert _store_keys(env, "builds/") == [] and _store_keys(env, REPOSITORY_PREFIX + "targets/") == []
        # A failed release can be deleted, uploads included, and the version registered again.
        assert env.client.delete("/api/v1/models/digits-mlp/2.0", headers=env.auth("operator")).status_code == 204
        assert _store_keys(env, "uploads/") == []
        assert env.client.get("/api/v1/models/digits-mlp/2.0", headers=env.auth("viewer")).status_code == 404


def test_registry_on_s3_publishes_and_cleans_up(tmp_path: Path, keyring_dir: Path, s3: Any,
                                                digits_mlp: SampleModel, digits_cnn: SampleModel) -> None:
    """The same flow with the artifact store on S3 (SeaweedFS): uploads, builds and the repository."""
    settings = Settings(state_dir=tmp_path / "state", keys_dir=keyring_dir, artifact_url=f"s3://{s3.bucket}/fleet",
                        s3_endpoint_url=s3.url, s3_access_key=s3.access_key, s3_secret_key=s3.secret_key,
                        build_variants=("onnxruntime-fp32", "openvino-fp32"), build_latency_runs=3)
    with start_env(settings) as env:
        model, golden = digits_mlp.path.read_bytes(), digits_mlp.golden_path.read_bytes()
        bad = _upload(env, model, digits_cnn.golden_path.read_bytes(), version="0.9")
        assert bad.status_code == 422 and _store_keys(env, "uploads/") == []
        assert _upload(env, model, golden).status_code == 202
        release = _wait_done(env, "digits-mlp", "1.0.0")
        assert release["status"] == "published", release["error"]
        repo = ImageRepository(PrefixedStore(env.ctx.store, REPOSITORY_PREFIX), Keyring(keyring_dir))
        names = {t.name for t in repo.signed_targets()}
        assert {"models/digits-mlp/1.0.0/onnxruntime-fp32.onnx", "models/digits-mlp/1.0.0/openvino-fp32.tar",
                "models/digits-mlp/1.0.0/golden.npz"} <= names
        t = next(t for t in repo.signed_targets() if t.name.endswith("openvino-fp32.tar"))
        assert hashlib.sha256(env.ctx.store.read_bytes(REPOSITORY_PREFIX + t.store_key)).hexdigest() == t.sha256
