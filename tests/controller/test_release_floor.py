"""Blocking known-bad releases: `PUT /api/v1/models/{model}/release-floor`, `edgefleet model block`, and
rollout creation refusing a release below the signed floor. Real app, real database, real signed
image repository in the artifact store; the floor is read back from the signed targets metadata."""

from __future__ import annotations

import json
import socket
import threading
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from controller.app import create_app
from controller.artifacts import LocalArtifactStore
from controller.auth import create_api_token
from controller.cli import app as cli_app
from controller.db.models import Device, DeviceTag, ModelRelease
from controller.registry.repository import REPOSITORY_PREFIX, PrefixedStore
from controller.settings import Settings
from manifests.keyring import Keyring
from manifests.repository import ImageRepository
from manifests.verify import signed_release_floors
from tests.controller.conftest import ControllerEnv, start_env
from tests.controller.test_offline_signing import _offline_keys
from tests.services import wait_until


def _seed(env: ControllerEnv, model: str = "digits", versions: int = 3) -> None:
    """Releases 1..n of `model` (counters 1..n), a device on 1 and one on n."""
    with env.ctx.session_factory() as session:
        for counter in range(1, versions + 1):
            session.add(ModelRelease(name=model, version=f"{counter}.0", release_counter=counter,
                                     status="published", model_key="k", golden_key="g", model_sha256="0" * 64,
                                     model_bytes=1, created_by="test"))
        for device_id, version in (("dev-old", "1.0"), ("dev-new", f"{versions}.0")):
            device = Device(id=device_id, hardware_class="x86", cert_serial=uuid.uuid4().hex,
                            cert_not_after=datetime.now(timezone.utc) + timedelta(days=30),
                            public_key_sha256="0" * 64, mqtt_username=device_id, mqtt_password_hash="x",
                            online=True, current_model=model, current_version=version)
            device.tags = [DeviceTag(tag="lab")]
            session.add(device)
        session.commit()


def _signed_floors(settings: Settings, keyring_dir: Path) -> dict[str, int]:
    store = LocalArtifactStore(Path(settings.resolved_artifact_url.removeprefix("file://")))
    repo = ImageRepository(PrefixedStore(store, REPOSITORY_PREFIX), Keyring(keyring_dir))
    version = repo.targets().signed.version
    return signed_release_floors(repo.store.read_bytes(f"metadata/{version}.targets.json"))


def _floor(env: ControllerEnv, below: Any, role: str = "admin", model: str = "digits") -> Any:
    return env.client.put(f"/api/v1/models/{model}/release-floor", json={"below": below}, headers=env.auth(role))


def test_admin_blocks_releases_with_a_signed_floor_that_never_goes_down(env: ControllerEnv,
                                                                         keyring_dir: Path) -> None:
    _seed(env)
    assert _floor(env, 3, role="operator").status_code == 403
    r = _floor(env, 3)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["release_floor"] == 3 and body["previous_floor"] == 0 and body["targets_version"] >= 2
    assert body["blocked_versions"] == ["1.0", "2.0"] and body["devices_on_blocked"] == ["dev-old"]
    assert _signed_floors(env.settings, keyring_dir) == {"digits": 3}  # in the release-key-signed metadata

    again = _floor(env, 3).json()
    assert again["targets_version"] is None and again["previous_floor"] == 3  # nothing re-signed
    lower = _floor(env, 2)
    assert lower.status_code == 409 and "never lowered" in lower.json()["error"]["message"]
    typo = _floor(env, 40)
    assert typo.status_code == 422
    assert "go up to 3" in typo.json()["error"]["message"] and "36" in typo.json()["error"]["message"]
    assert _floor(env, 4).json()["blocked_versions"] == ["1.0", "2.0", "3.0"]  # everything so far
    assert _floor(env, 2, model="nosuch").status_code == 404
    for bad in (0, -1, "3", None):
        r = _floor(env, bad)
        assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_request", r.text
    assert _signed_floors(env.settings, keyring_dir) == {"digits": 4}


@pytest.fixture
def served(controller_settings: Settings) -> Iterator[tuple[str, ControllerEnv]]:
    """The app behind a real HTTP server on a free port (the CLI speaks HTTP), plus its tokens."""
    port = _free_port()
    app = create_app(controller_settings)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started, timeout_s=30, message="controller HTTP server")
    tokens = {}
    with app.state.ctx.session_factory() as session:
        for role in ("admin", "operator"):
            _, tokens[role] = create_api_token(session, name=f"cli-{role}", role=role)
        session.commit()
    try:
        yield f"http://127.0.0.1:{port}", ControllerEnv(client=TestClient(app), settings=controller_settings,
                                                        tokens=tokens)
    finally:
        server.should_exit = True
        thread.join(10)


def _text(result: Any) -> str:
    """CLI output with rich's line wrapping undone."""
    return " ".join(result.output.split())


def test_cli_model_block_asks_first_and_reports_affected_devices(served: tuple[str, ControllerEnv],
                                                                 keyring_dir: Path) -> None:
    url, env = served
    _seed(env)
    runner = CliRunner()
    args = ["model", "block", "digits", "--below", "2", "--url", url]
    declined = runner.invoke(cli_app, [*args, "--token", env.tokens["admin"]], input="n\n")
    assert declined.exit_code == 1 and "nothing changed" in _text(declined)
    assert _signed_floors(env.settings, keyring_dir) == {}
    weak = runner.invoke(cli_app, [*args, "--yes", "--token", env.tokens["operator"]])
    assert weak.exit_code == 2 and "needs the admin role" in _text(weak) and "HTTP 403" in _text(weak)
    done = runner.invoke(cli_app, [*args, "--token", env.tokens["admin"]], input="y\n")
    assert done.exit_code == 0, done.output
    assert "release floor 0 → 2" in _text(done) and "blocked versions: 1.0" in _text(done)
    assert "dev-old" in _text(done)  # still running the blocked release: roll it forward
    assert _signed_floors(env.settings, keyring_dir) == {"digits": 2}
    as_json = runner.invoke(cli_app, [*args, "--yes", "--json", "--token", env.tokens["admin"]])
    assert as_json.exit_code == 0 and json.loads(as_json.stdout)["targets_version"] is None
    lower = runner.invoke(cli_app, ["model", "block", "digits", "--below", "1", "--url", url, "--yes",
                                    "--token", env.tokens["admin"]])
    assert lower.exit_code == 2 and "never lowered" in _text(lower) and "Traceback" not in lower.output


def test_offline_release_key_answers_where_the_floor_must_be_signed(
        controller_settings: Settings, keyring_dir: Path, tmp_path: Path) -> None:
    settings = controller_settings.model_copy(update={"keys_dir": _offline_keys(keyring_dir, tmp_path)})
    store = LocalArtifactStore(Path(settings.resolved_artifact_url.removeprefix("file://")))
    where_the_key_is = ImageRepository(PrefixedStore(store, REPOSITORY_PREFIX), Keyring(keyring_dir))
    where_the_key_is.initialize()
    with start_env(settings) as env:
        _seed(env)
        r = _floor(env, 2)
        assert r.status_code == 409, r.text
        error = r.json()["error"]
        assert "release key is offline" in error["message"] and "set_release_floor('digits', 2)" in error["message"]
        assert error["details"]["release_key"] == "offline"
        assert _signed_floors(settings, keyring_dir) == {}
        where_the_key_is.set_release_floor("digits", 2)  # done where the release key lives
        seen = _floor(env, 2).json()
        assert seen["previous_floor"] == 2 and seen["targets_version"] is None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def env_with_rollouts(controller_settings: Settings) -> Iterator[ControllerEnv]:
    """The app's own rollout engine (bridge configured; no broker needed to refuse a rollout)."""
    settings = controller_settings.model_copy(update={"mqtt_bridge": True, "mqtt_port": _free_port()})
    with start_env(settings) as env:
        assert "rollout_engine" in env.ctx.extras
        yield env


def test_rollout_of_a_release_below_the_floor_is_refused_naming_both_numbers(
        env_with_rollouts: ControllerEnv) -> None:
    env = env_with_rollouts
    _seed(env)
    assert _floor(env, 3).status_code == 200

    def create(rollout_id: str, version: str, **extra: Any) -> Any:
        body = {"id": rollout_id, "release": {"model": "digits", "version": version},
                "selector": {"tags": ["lab"]}, "waves": [{"percent": 100, "soak_s": 0}], **extra}
        return env.client.post("/api/v1/rollouts", content=json.dumps(body), headers={
            **env.auth("operator"), "Content-Type": "application/json"})

    refused = create("r-old", "2.0")
    assert refused.status_code == 422, refused.text
    message = refused.json()["error"]["message"]
    assert "release counter 2" in message and "release floor 3" in message
    assert env.client.get("/api/v1/rollouts/r-old", headers=env.auth("viewer")).status_code == 404
    assert create("r-new", "3.0").status_code == 201
    # a fleet rollback may only name a release the fleet ran (dev-new runs 3.0; nobody ever ran 9.0)
    never = create("r-back-9", "9.0", rollback=True)
    assert never.status_code == 422 and "runs on no device" in never.json()["error"]["message"]
    back = create("r-back-3", "3.0", rollback=True)
    assert back.status_code == 201 and back.json()["rollback"] is True
