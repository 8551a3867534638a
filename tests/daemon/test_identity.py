"""A device whose key or broker password other local users can read refuses to start."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.daemon.fleet import AgentProcess, ControllerSide, one_agent, wait_for


@pytest.fixture
def fleet(tmp_path: Path, mosquitto: Any) -> Iterator[tuple[ControllerSide, AgentProcess]]:
    with one_agent(tmp_path, mosquitto.port, "edge-identity") as pair:
        yield pair


def refusal(agent: AgentProcess) -> list[str]:
    assert agent.proc is not None
    assert agent.proc.wait(60) == 2, agent.log()
    return [line for line in agent.log().splitlines() if "refusing to start" in line]


def test_readable_secrets_stop_the_daemon_before_it_does_anything(
        fleet: tuple[ControllerSide, AgentProcess], tmp_path: Path) -> None:
    controller, agent = fleet
    identity = agent.state_dir / "identity"
    identity.mkdir(parents=True)
    key = identity / "device.key"
    key.write_bytes(b"-----BEGIN PRIVATE KEY-----\n")
    key.chmod(0o640)
    agent.start()
    lines = refusal(agent)
    assert len(lines) == 1 and f"{key} has mode 0640" in lines[0] and f"chmod 600 {key}" in lines[0], lines
    assert not (agent.state_dir / "trust.json").exists()  # refused before pinning roots or connecting
    assert "online" not in controller.presence()

    # A configured password file outside the state folder is checked too.
    key.chmod(0o600)
    password = tmp_path / "mqtt.password"
    password.write_text("not-used-by-this-broker\n")
    password.chmod(0o644)
    agent.write_config(mqtt_password_file=str(password))
    agent.log_path.unlink()
    agent.start()
    lines = refusal(agent)
    assert len(lines) == 1 and f"{password} has mode 0644" in lines[0] and str(key) not in lines[0], lines

    password.chmod(0o600)
    agent.log_path.unlink()
    agent.start()
    wait_for(lambda: any(m.startswith("READY=1") for m in agent.notify.messages), 60, "READY=1", agent.log)
    assert (agent.state_dir / "trust.json").stat().st_mode & 0o077 == 0
    assert agent.terminate() == 0
