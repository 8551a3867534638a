"""Dockerfile.agent's HEALTHCHECK command, run as written against a real daemon's state folder.

No Docker engine runs here: the command runs on this host with the image's two paths mapped to this
checkout (the venv's `edgefleet-agent`, the test device's config). The daemon is `edgefleet-agent run`
as a real process with a real broker and no model yet: a freshly enrolled device.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.daemon.fleet import AgentProcess, ControllerSide, wait_for
from tests.provisioning.harness import REPO
from tests.provisioning.test_dockerfile import _healthcheck_command

IMAGE_AGENT = "/opt/edgefleet/bin/edgefleet-agent"
IMAGE_CONFIG = "/etc/edgefleet/agent.toml"


@pytest.fixture
def agent(tmp_path: Path, mosquitto: Any) -> Iterator[AgentProcess]:
    controller = ControllerSide(tmp_path, mosquitto.port, "edge-health")
    process = AgentProcess(tmp_path, controller, mosquitto.port)
    try:
        yield process
    finally:
        if process.proc is not None and process.proc.poll() is None:
            os.kill(process.proc.pid, signal.SIGCONT)
        process.kill()
        process.notify.close()
        controller.close()


def _healthcheck(agent: AgentProcess) -> subprocess.CompletedProcess[str]:
    command = _healthcheck_command()
    assert IMAGE_AGENT in command and IMAGE_CONFIG in command, command
    mapping = {IMAGE_AGENT: str(Path(sys.executable).parent / "edgefleet-agent"), IMAGE_CONFIG: str(agent.config_path)}
    return subprocess.run([mapping.get(word, word) for word in command], capture_output=True, text=True, timeout=60,
                          cwd=agent.config_path.parent, env={**os.environ, "PYTHONPATH": str(REPO)})


def _proc_state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]


def _serves(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/v2/health/ready", timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def test_healthcheck_follows_the_daemon_not_the_model(agent: AgentProcess) -> None:
    if not Path("/proc/self/stat").exists():
        pytest.skip("needs /proc (Linux)")
    assert _healthcheck(agent).returncode == 3  # never started: no daemon.json
    agent.start()
    assert agent.proc is not None
    pid = agent.proc.pid
    runtime = agent.state_dir / "daemon.json"
    wait_for(lambda: runtime.exists() and json.loads(runtime.read_text()).get("state") == "running", 60,
             "the daemon to run", agent.log)

    healthy = _healthcheck(agent)
    assert healthy.returncode == 0, healthy.stdout + healthy.stderr + agent.log()
    assert f"pid {pid}" in healthy.stdout
    assert not _serves(agent.url)  # no model yet: the old readiness probe called this unhealthy

    os.kill(pid, signal.SIGSTOP)  # hung: alive, but not running
    wait_for(lambda: _proc_state(pid) in ("T", "t"), 10, "the daemon to stop")
    stuck = _healthcheck(agent)
    assert stuck.returncode == 3 and "stopped" in stuck.stdout, stuck.stdout + stuck.stderr
    os.kill(pid, signal.SIGCONT)
    wait_for(lambda: _healthcheck(agent).returncode == 0, 30, "the daemon to be healthy again", agent.log)

    # A daemon that promises a heartbeat in daemon.json is judged by its age too.
    doc = json.loads(runtime.read_text())
    runtime.write_text(json.dumps({**doc, "heartbeat_s": 10, "updated_at": time.time()}))
    assert _healthcheck(agent).returncode == 0
    runtime.write_text(json.dumps({**doc, "heartbeat_s": 10, "updated_at": time.time() - 60}))
    stale = _healthcheck(agent)
    assert stale.returncode == 3 and "not refreshed" in stale.stdout, stale.stdout
    runtime.write_text(json.dumps(doc))

    agent.kill()  # dead: daemon.json still says running, its pid is gone
    assert json.loads(runtime.read_text())["state"] == "running"
    dead = _healthcheck(agent)
    assert dead.returncode == 3 and "not running" in dead.stdout, dead.stdout + dead.stderr
