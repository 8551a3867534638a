"""Sample capture: the policy's caps and off switch, the spool's bound, upload through presigned URLs
(S3 on SeaweedFS and the controller's own store) with expired-URL recovery, export round trip, and
retraining the digits model on the exported dataset."""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import uvicorn
from typer.testing import CliRunner

from agent.capture import CaptureSpool, HttpControllerApi, HttpObjectPut, SampleUploader, UrlExpired
from agent.capture.capturer import SampleCapturer
from agent.capture.policy import CaptureBudget, decide
from controller.app import create_app
from controller.db.base import utcnow
from controller.db.models import Device
from controller.mqtt.mosquitto_auth import hash_password
from controller.samples.export import load_dataset
from controller.samples_cli import app as samples_cli
from controller.settings import Settings
from manifests.assignment import CapturePolicy
from tests.controller.conftest import ControllerEnv
from tests.service_process import free_port
from tests.services import SeaweedS3, wait_until
from tests.telemetry.conftest import include_routers

POLICY = CapturePolicy(enabled=True, random_rate=0.1, low_confidence_threshold=0.6, capture_disagreement=True,
                       max_samples_per_hour=5, max_bytes_per_day=10_000)


def test_policy_reasons_caps_and_off_switch() -> None:
    budget = CaptureBudget()
    kw = {"size_bytes": 1000, "disagreed": False}
    assert decide(POLICY, budget, now_s=0, confidence=0.99, draw=0.5, **kw).refused == "not_selected"
    assert decide(POLICY, budget, now_s=0, confidence=0.99, draw=0.05, **kw).reason == "random"
    assert decide(POLICY, budget, now_s=1, confidence=0.3, draw=0.9, **kw).reason == "low_confidence"
    d = decide(POLICY, budget, now_s=2, confidence=0.3, draw=0.9, size_bytes=1000, disagreed=True)
    assert d.keep and d.reason == "disagreement"
    kept = [decide(POLICY, budget, now_s=10 + i, confidence=0.1, draw=0.9, **kw).keep for i in range(10)]
    assert sum(kept) == 2  # 5 per hour
    assert decide(POLICY, budget, now_s=20, confidence=0.1, draw=0.9, **kw).refused == "hourly_budget"
    # An hour later the hourly window has room again, but the day's 10 kB are spent after 10 samples.
    later = [decide(POLICY, budget, now_s=3700 + i, confidence=0.1, draw=0.9, **kw) for i in range(6)]
    assert [d.keep for d in later] == [True] * 5 + [False]
    assert decide(POLICY, budget, now_s=7300, confidence=0.1, draw=0.9, **kw).refused == "daily_budget"
    assert decide(POLICY, budget, now_s=86400 + 10, confidence=0.1, draw=0.9, **kw).keep
    off = CapturePolicy(enabled=False, random_rate=1.0, max_samples_per_hour=100, max_bytes_per_day=10**9)
    assert decide(off, CaptureBudget(), now_s=0, confidence=0.0, draw=0.0, size_bytes=1,
                  disagreed=True).refused == "disabled"
    default = CapturePolicy()
    assert not decide(default, CaptureBudget(), now_s=0, confidence=0.0, draw=0.0, size_bytes=1, disagreed=True).keep


@dataclass
class Version:
    model: str = "digits-mlp"
    version: str = "1"
    variant: str = "ort-fp32"


def _infer(model: Any, rows: np.ndarray) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(model.path), providers=["CPUExecutionProvider"])
    (scores,) = session.run([model.output_name], {model.input_name: rows})
    return {model.output_name: scores}


def test_capturer_respects_caps_spool_bound_and_privacy_switch(tmp_path: Path, digits_mlp: Any) -> None:
    inputs = digits_mlp.golden.inputs[:200]
    outputs = _infer(digits_mlp, inputs)
    spool = CaptureSpool(tmp_path / "capture", max_bytes=1_000_000)
    clock = [1_000.0]
    capturer = SampleCapturer("dev-1", spool, CapturePolicy(enabled=True, random_rate=1.0, max_samples_per_hour=30,
                              max_bytes_per_day=10**7), clock=lambda: clock[0], rng=random.Random(1))
    capturer.observe(Version(), {digits_mlp.input_name: inputs}, outputs)
    assert len(spool) == 30 and capturer.stats["skipped:hourly_budget"] == 170
    sample = spool.pending(1)[0]
    with np.load(spool.root / f"{sample.sample_id}.npz") as npz:
        assert npz[f"input.{digits_mlp.input_name}"].shape == (1, 64)
    # Restart: the budget is seeded from the spool, so a reboot does not reset the hourly cap.
    again = SampleCapturer("dev-1", CaptureSpool(tmp_path / "capture", max_bytes=1_000_000), capturer.policy,
                           clock=lambda: clock[0], rng=random.Random(2))
    again.observe(Version(), {digits_mlp.input_name: inputs[:5]}, _infer(digits_mlp, inputs[:5]))
    assert len(again.spool) == 30
    # The spool's byte bound drops the oldest and counts them.
    small = CaptureSpool(tmp_path / "small", max_bytes=3 * sample.size_bytes + 10)
    capped = SampleCapturer("dev-1", small, capturer.policy, clock=lambda: clock[0])
    capped.observe(Version(), {digits_mlp.input_name: inputs[:10]}, _infer(digits_mlp, inputs[:10]))
    assert len(small) == 3 and small.dropped == 7
    # Off switch: nothing more is captured and what waits is deleted, not uploaded later.
    again.set_policy(CapturePolicy(enabled=False, random_rate=1.0, max_samples_per_hour=100, max_bytes_per_day=10**9))
    again.observe(Version(), {digits_mlp.input_name: inputs}, outputs)
    assert len(again.spool) == 0 and not list((tmp_path / "capture").glob("*.npz"))
    assert again.stats["discarded_by_policy"] == 30


def test_disagreement_capture(tmp_path: Path, digits_mlp: Any) -> None:
    inputs = digits_mlp.golden.inputs[:50]
    new = _infer(digits_mlp, inputs)
    previous = {k: np.roll(v, 1, axis=1) for k, v in new.items()}  # a previous model that answers differently
    previous[digits_mlp.output_name][:25] = new[digits_mlp.output_name][:25]
    policy = CapturePolicy(enabled=True, capture_disagreement=True, max_samples_per_hour=100, max_bytes_per_day=10**7)
    capturer = SampleCapturer("dev-1", CaptureSpool(tmp_path), policy, rng=random.Random(0))
    capturer.observe_disagreement(Version(), {digits_mlp.input_name: inputs}, new, previous)
    assert capturer.stats["captured:disagreement"] == 25
    assert {m.reason for m in capturer.spool.pending()} == {"disagreement"}


# -- upload through a served controller ------------------------------------------------------------


@dataclass
class Served:
    url: str
    env: ControllerEnv
    config_file: Path


def _serve(app: Any, port: int) -> Iterator[None]:
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started, message="controller serving")
        yield
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.fixture(params=["s3", "local"])
def served(request: pytest.FixtureRequest, tmp_path: Path, keyring_dir: Path) -> Iterator[Served]:
    port = free_port()
    extra: dict[str, Any] = {}
    ports: dict[str, Any] = {}
    if request.param == "s3":
        s3: SeaweedS3 = request.getfixturevalue("s3")
        extra = {"artifact_url": f"s3://{s3.bucket}/fleet", "s3_endpoint_url": s3.url,
                 "s3_access_key": s3.access_key, "s3_secret_key": s3.secret_key}
    settings = Settings(state_dir=tmp_path / "state", database_url=f"sqlite:///{tmp_path / 'c.db'}",
                        keys_dir=keyring_dir, public_url=f"http://127.0.0.1:{port}", **extra)
    config_file = tmp_path / "controller.toml"
    config_file.write_text("".join(f'{k} = "{v}"\n' for k, v in {
        "state_dir": tmp_path / "state", "database_url": settings.database_url, "keys_dir": keyring_dir, **extra}.items()))
    app = create_app(settings, **ports)
    from fastapi.testclient import TestClient

    with TestClient(app) as client:
        env = include_routers(ControllerEnv(client=client, settings=settings, tokens={}))
        env.ctx.extras["sample_url_ttl_s"] = 1
        with env.ctx.session_factory() as db:
            db.add(Device(id="dev-1", hardware_class="rpi4", cert_serial="1", public_key_sha256="0" * 64,
                          mqtt_username="dev-1", mqtt_password_hash=hash_password("pw-1"),
                          cert_not_after=utcnow().replace(year=utcnow().year + 1)))
            db.commit()
        yield from (Served(f"http://127.0.0.1:{port}", env, config_file) for _ in _serve(app, port))


class ExpiringPut(HttpObjectPut):
    """The real PUT, but the first one waits until its 1-second URL has expired."""

    def __init__(self, after_wait: Callable[[], None]) -> None:
        super().__init__()
        self.after_wait = after_wait
        self.first = True
        self.refused = 0

    def put(self, url: str, data: bytes, headers: Mapping[str, str]) -> None:
        if self.first:
            self.first = False
            deadline = time.time() + 2.5
            wait_until(lambda: time.time() > deadline, timeout_s=5, message="the URL to expire")
            self.after_wait()
            try:
                super().put(url, data, headers)
            except UrlExpired:
                self.refused += 1
                raise
            return
        super().put(url, data, headers)


def test_upload_with_expired_url_then_export_and_retrain(served: Served, tmp_path: Path, digits_mlp: Any) -> None:
    inputs, labels = digits_mlp.golden.inputs[:40], digits_mlp.golden.labels[:40]
    spool = CaptureSpool(tmp_path / "capture")
    capturer = SampleCapturer("dev-1", spool, CapturePolicy(enabled=True, random_rate=1.0, max_samples_per_hour=100,
                              max_bytes_per_day=10**7), rng=random.Random(0))
    capturer.observe(Version(), {digits_mlp.input_name: inputs}, _infer(digits_mlp, inputs))
    assert len(spool) == 40
    put = ExpiringPut(lambda: served.env.ctx.extras.update(sample_url_ttl_s=900))
    uploader = SampleUploader(spool, HttpControllerApi(served.url, "dev-1", "pw-1"), put, batch=16)
    uploaded = 0
    while len(spool):
        uploaded += uploader.upload_round()
    # The whole first round's URLs (1 s) expired during the wait; each was replaced by a fresh one.
    assert uploaded == 40 and put.refused == 1 and uploader.stats["urls_refreshed"] == 16

    # Wrong device password: refused, nothing recorded for it.
    with pytest.raises(Exception, match="401"):
        HttpControllerApi(served.url, "dev-1", "wrong").complete(["x" * 24])

    out = tmp_path / "dataset"
    result = CliRunner().invoke(samples_cli, ["export", "--model", "digits-mlp", "--out", str(out),
                                              "--config", str(served.config_file)])
    assert result.exit_code == 0, result.output
    arrays, manifest = load_dataset(out)
    assert manifest["count"] == 40 and not manifest["skipped"]
    x = arrays[f"input.{digits_mlp.input_name}"]
    assert x.shape == (40, 64)
    # Every captured row is one of the inputs, with the model's answer beside it.
    index_of = {row.tobytes(): i for i, row in enumerate(inputs)}
    assert sorted(index_of[row.tobytes()] for row in x) == list(range(40))
    scores = arrays[f"output.{digits_mlp.output_name}"]
    np.testing.assert_allclose(scores, _infer(digits_mlp, x)[digits_mlp.output_name], rtol=1e-5, atol=1e-6)
    future = CliRunner().invoke(samples_cli, ["export", "--model", "digits-mlp", "--out", str(tmp_path / "none"),
                                              "--since", "2999-01-01T00:00:00Z", "--config", str(served.config_file)])
    assert future.exit_code == 0 and load_dataset(tmp_path / "none")[1]["count"] == 0

    label_file = tmp_path / "labels.json"
    label_file.write_text(json.dumps({s["sample_id"]: int(labels[index_of[x[s["index"]].tobytes()]])
                                      for s in manifest["samples"]}))
    import importlib.util

    spec = importlib.util.spec_from_file_location("retrain_digits", Path("examples/retrain_digits.py"))
    assert spec and spec.loader
    retrain = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(retrain)
    figures = retrain.main(["--dataset", str(out), "--labels", str(label_file), "--out", str(tmp_path / "new.onnx"),
                            "--max-iter", "40"])
    assert figures["captured_rows"] == 40 and figures["label_source"] == "labels"
    assert figures["accuracy"] > 0.9
    session = ort.InferenceSession(str(tmp_path / "new.onnx"), providers=["CPUExecutionProvider"])
    (probs,) = session.run(["probabilities"], {"input": digits_mlp.golden.inputs})
    assert (probs.argmax(axis=1) == digits_mlp.golden.labels).mean() > 0.9
