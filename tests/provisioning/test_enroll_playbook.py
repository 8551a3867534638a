"""`enroll-device.yml` for real: ansible-playbook with a local connection against a sandbox prefix,
then the installed agent enrolls with a live controller and comes online over mutual TLS."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from agent.hardware import probe
from tests.agent.trees import intel_nuc
from tests.provisioning.harness import Fleet, run_playbook, seed_venv, start_fleet
from tests.services import Mosquitto, wait_until


@pytest.fixture
def fleet(tmp_path: Path, provisioning_keys: Path, mosquitto_factory: Callable[..., Mosquitto]) -> Iterator[Fleet]:
    f = start_fleet(tmp_path, provisioning_keys, mosquitto_factory)
    try:
        yield f
    finally:
        f.app.stop()


def _inventory(tmp_path: Path) -> Path:
    path = tmp_path / "inventory.yml"
    path.write_text(
        "all:\n  children:\n    devices:\n      children:\n        intel:\n          hosts:\n"
        f"            sandbox-nuc:\n              ansible_connection: local\n"
        f"              ansible_python_interpreter: {sys.executable}\n"
    )
    return path


def test_enroll_playbook_installs_enrolls_and_the_agent_comes_online(
    fleet: Fleet, tmp_path: Path, agent_wheel: Path
) -> None:
    root = tmp_path / "sandbox"
    venv = root / "opt" / "edgefleet" / "agent"
    seed_venv(venv)
    probe_root = intel_nuc(tmp_path / "probe")
    extra_vars = {
        "edgefleet_root": str(root),
        "edgefleet_package": str(agent_wheel),
        "edgefleet_agent_extras": ["agent"],
        "edgefleet_pip_extra_args": f"--no-index --find-links {agent_wheel.parent}",
        "edgefleet_create_user": False,
        "edgefleet_manage_service": False,
        "edgefleet_wait_online": False,
        "edgefleet_controller_url": fleet.url,
        "edgefleet_admin_token": fleet.admin_token,
        "edgefleet_device_id": "nuc-store-12",
        "edgefleet_device_tags": ["site:lyon", "hw:intel"],
        "edgefleet_probe_root": str(probe_root),
        "edgefleet_server_port": 0,
    }
    inventory = _inventory(tmp_path)
    first = run_playbook("enroll-device.yml", inventory, extra_vars, tmp_path)
    assert first.returncode == 0, first.stdout[-6000:] + first.stderr[-3000:]
    assert fleet.admin_token not in first.stdout  # no_log on every task that carries it

    # Everything the playbook wrote lies under the sandbox prefix.
    state = root / "var" / "lib" / "edgefleet-agent"
    identity = state / "identity"
    record = json.loads((identity / "enrollment.json").read_text())
    assert record["device_id"] == "nuc-store-12"
    assert record["mqtt"]["tls"] is True and record["mqtt"]["port"] == fleet.device_port
    assert stat.S_IMODE((identity / "device.key").stat().st_mode) == 0o600
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert not (state / "enrollment.token").exists()
    assert (state / "trust.json").is_file()
    unit = (root / "etc" / "systemd" / "system" / "edgefleet-agent.service").read_text()
    for line in ("Type=notify", "WatchdogSec=60", "Restart=always",
                 f"ExecStart={venv}/bin/edgefleet-agent run --config {root}/etc/edgefleet/agent.toml",
                 f"ReadWritePaths={state}"):
        assert line in unit, unit

    # The certificate binds the key generated on the device; the controller recorded that key.
    key = serialization.load_pem_private_key((identity / "device.key").read_bytes(), password=None)
    cert = x509.load_pem_x509_certificate((identity / "device.crt").read_bytes())
    assert cert.public_key() == key.public_key()
    device = fleet.api("/api/v1/devices/nuc-store-12")
    assert device["hardware_class"] == probe(probe_root).hardware_class  # probed on the device
    assert sorted(device["tags"]) == ["hw:intel", "site:lyon"]
    assert device["online"] is False

    # The installed agent (from the venv the playbook populated) comes online over mutual TLS.
    log = (tmp_path / "agent.log").open("wb")
    agent = subprocess.Popen([str(venv / "bin" / "edgefleet-agent"), "run", "--config",
                              str(root / "etc" / "edgefleet" / "agent.toml")],
                             stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                             env={**os.environ, "NOTIFY_SOCKET": ""})
    try:
        wait_until(lambda: fleet.device_online("nuc-store-12") or agent.poll() is not None, timeout_s=60,
                   message="the agent to come online")
        assert agent.poll() is None, (tmp_path / "agent.log").read_text()[-4000:]

        # Running the playbook again is idempotent: no second enrollment, and its online wait passes.
        second = run_playbook("enroll-device.yml", inventory, {**extra_vars, "edgefleet_wait_online": True,
                                                               "edgefleet_wait_online_s": 30}, tmp_path)
        assert second.returncode == 0, second.stdout[-6000:]
        assert "Enroll (the device key" not in _changed_tasks(second.stdout)
        assert json.loads((identity / "enrollment.json").read_text()) == record
        tokens = fleet.api("/api/v1/enrollment-tokens")["items"]
        assert len(tokens) == 1 and tokens[0]["used_by_device"] == "nuc-store-12"
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.wait(timeout=30)
    wait_until(lambda: not fleet.device_online("nuc-store-12"), timeout_s=30, message="offline after SIGTERM")


def _changed_tasks(stdout: str) -> str:
    """The task headers followed by a `changed:` line."""
    out, current = [], ""
    for line in stdout.splitlines():
        if line.startswith("TASK ["):
            current = line
        elif line.startswith("changed:"):
            out.append(current)
    return "\n".join(out)
