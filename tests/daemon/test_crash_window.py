"""kill -9 between verifying an assignment and accepting it: the assignment is still carried out.

The daemon verifies without touching trust.json, writes pending-plan.json, marks the envelope
handled, and only then commits the new version to trust.json. These tests SIGKILL the real daemon
(through `tests.daemon.crash_runner`, the same code with a crash hook) at those points and restart
the plain `edgefleet-agent run`.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from controller.sample_models import SampleModel
from tests.daemon.fleet import AgentProcess, ControllerSide, one_agent, wait_for

CRASH_RUNNER = ("tests.daemon.crash_runner",)


@pytest.fixture
def fleet(tmp_path: Path, mosquitto: Any, request: pytest.FixtureRequest) -> Iterator[tuple[ControllerSide, AgentProcess]]:
    with one_agent(tmp_path, mosquitto.port, f"edge-crash-{request.node.callspec.id}") as pair:
        yield pair


def accepted_version(agent: AgentProcess) -> int:
    doc = json.loads((agent.state_dir / "trust.json").read_bytes())
    return int(doc["assignment_version"])


def committed(controller: ControllerSide, agent: AgentProcess, version: int) -> None:
    def done() -> str | None:
        kinds = controller.event_kinds(version)
        return next((k for k in ("committed", "failed", "rolled_back") if k in kinds), None)

    assert wait_for(done, 120, f"the outcome of assignment {version}", agent.log) == "committed"


@pytest.mark.parametrize("step", ["pending", "handled"])
def test_kill_before_the_trust_commit_still_carries_the_assignment_out(
        fleet: tuple[ControllerSide, AgentProcess], digits_mlp: SampleModel, step: str) -> None:
    controller, agent = fleet
    agent.start(CRASH_RUNNER, EDGEFLEET_TEST_KILL_AT=step)
    wait_for(lambda: "online" in controller.presence(), 60, "the agent's online presence", agent.log)
    v1 = controller.assign(controller.publish_release(digits_mlp, "1", 1))
    assert agent.proc is not None
    assert agent.proc.wait(120) == -signal.SIGKILL, agent.log()

    # Killed with the plan on disk and the version not yet accepted: the retained copy is no replay.
    assert (agent.state_dir / "pending-plan.json").exists()
    assert accepted_version(agent) == 0
    assert (agent.state_dir / "handled-assignment.sha256").exists() is (step == "handled")

    agent.start()
    committed(controller, agent, v1)
    wait_for(lambda: agent.serving(digits_mlp), 30, "serving v1 after the restart", agent.log)
    assert agent.infer(digits_mlp)[1] == "1"
    wait_for(lambda: not (agent.state_dir / "pending-plan.json").exists(), 30, "the pending plan cleared")
    assert controller.event("assignment_rejected") is None, controller.events()
    assert controller.event_kinds(v1).count("committed") == 1
    if step == "pending":
        # The retained envelope was not handled yet: it is verified again, its apply is a no-op, and
        # this time the version is accepted.
        wait_for(lambda: accepted_version(agent) == v1, 30, "trust.json accepting v1", agent.log)
    else:
        # Marked handled before the crash, so not verified again: the next assignment moves the floor.
        v2 = controller.assign(controller.publish_release(digits_mlp, "2", 2))
        committed(controller, agent, v2)
        assert accepted_version(agent) == v2
        assert agent.infer(digits_mlp)[1] == "2"
    assert agent.terminate() == 0
