"""The `edgefleet` CLI against a real `edgefleet controller serve` process: migrate, bootstrap an admin
token, then enrollment tokens, model upload with --wait, listing — URL and token from the environment
or the CLI config file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.sample_models import SampleModel
from tests.services import free_port

EDGEFLEET = [sys.executable, "-m", "controller.cli"]


def _run(args: list[str], env: dict[str, str], timeout_s: float = 120.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(EDGEFLEET + args, env=env, capture_output=True, text=True, timeout=timeout_s)


@pytest.fixture
def served(tmp_path: Path, keyring_dir: Path) -> Iterator[dict[str, str]]:
    port = free_port()
    env = {**os.environ, "EDGEFLEET_STATE_DIR": str(tmp_path / "state"), "EDGEFLEET_KEYS_DIR": str(keyring_dir),
           "EDGEFLEET_PORT": str(port), "EDGEFLEET_PUBLIC_URL": f"http://127.0.0.1:{port}",
           "EDGEFLEET_CLI_CONFIG": str(tmp_path / "cli.toml"), "COLUMNS": "250",
           "EDGEFLEET_BUILD_VARIANTS": '["onnxruntime-fp32", "openvino-fp32"]', "EDGEFLEET_BUILD_LATENCY_RUNS": "3"}
    env.pop("EDGEFLEET_URL", None)
    env.pop("EDGEFLEET_TOKEN", None)
    migrated = _run(["controller", "migrate"], env)
    assert migrated.returncode == 0 and migrated.stdout.strip().startswith("database schema: empty → "), migrated.stderr
    log = (tmp_path / "serve.log").open("w")
    server = subprocess.Popen(EDGEFLEET + ["controller", "serve"], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert server.poll() is None, (tmp_path / "serve.log").read_text()
            assert time.monotonic() < deadline, "controller did not answer /healthz within 60 s"
            time.sleep(0.2)
        env["EDGEFLEET_URL"] = f"http://127.0.0.1:{port}"
        yield env
    finally:
        server.terminate()
        server.wait(30)
        log.close()


def test_cli_drives_a_running_controller(served: dict[str, str], tmp_path: Path, digits_mlp: SampleModel) -> None:
    env = served
    # Without a token the API refuses, and the CLI says so with a non-zero exit.
    refused = _run(["devices", "list"], env)
    assert refused.returncode == 1 and "401" in refused.stderr

    created = _run(["tokens", "create", "--role", "admin", "--name", "ops"], env)
    assert created.returncode == 0, created.stderr
    secret = created.stdout.strip()
    assert secret.startswith("efo_") and "\n" not in secret

    # The token from the config file (which must not be readable by others)...
    config = Path(env["EDGEFLEET_CLI_CONFIG"])
    config.write_text(f'token = "{secret}"\n')
    config.chmod(0o644)
    assert "readable by others" in _run(["devices", "list"], env).stderr
    config.chmod(0o600)
    listed = _run(["devices", "list", "--json"], env)
    assert listed.returncode == 0 and json.loads(listed.stdout)["total"] == 0

    # ...or from the environment.
    env_with_token = {**env, "EDGEFLEET_TOKEN": secret, "EDGEFLEET_CLI_CONFIG": str(tmp_path / "absent.toml")}
    enrollment = _run(["enrollment-tokens", "create", "--tag", "site:lab", "--ttl-s", "600"], env_with_token)
    assert enrollment.returncode == 0 and enrollment.stdout.strip().startswith("efe_"), enrollment.stderr

    upload = _run(["models", "upload", str(digits_mlp.path), "--golden", str(digits_mlp.golden_path),
                   "--name", "digits-mlp", "--version", "1.0.0", "--min-accuracy", "0.9", "--wait"],
                  env_with_token, timeout_s=300)
    assert upload.returncode == 0, upload.stdout + upload.stderr
    assert "published" in upload.stdout and "onnxruntime-fp32" in upload.stdout
    shown = json.loads(_run(["models", "show", "digits-mlp", "1.0.0", "--json"], env_with_token).stdout)
    assert shown["status"] == "published" and any(v["offered"] for v in shown["variants"])
    files = _run(["broker", "files", "--out", str(tmp_path / "broker")],
                 {**env_with_token, "EDGEFLEET_MQTT_BRIDGE_PASSWORD": "bridge-secret"})
    assert files.returncode == 0, files.stderr
    passwd = (tmp_path / "broker" / "passwd").read_text()
    assert passwd.startswith("edgefleet-controller:$7$") and (tmp_path / "broker" / "passwd").stat().st_mode & 0o077 == 0
    assert "pattern read edgefleet/v1/%u/assignment" in (tmp_path / "broker" / "acl").read_text()
    dup = _run(["models", "upload", str(digits_mlp.path), "--golden", str(digits_mlp.golden_path),
                "--name", "digits-mlp", "--version", "1.0.0"], env_with_token)
    assert dup.returncode == 1 and "409" in dup.stderr
