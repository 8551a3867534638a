"""An operator blocks a known-bad release: a floor signed into the targets metadata makes the real
daemon refuse the assignment (reported), keep serving what it runs, and persist the floor."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from controller.sample_models import SampleModel
from tests.daemon.fleet import AgentProcess, ControllerSide, one_agent, wait_for


@pytest.fixture
def fleet(tmp_path: Path, mosquitto: Any) -> Iterator[tuple[ControllerSide, AgentProcess]]:
    with one_agent(tmp_path, mosquitto.port, "edge-floor") as pair:
        yield pair


def test_signed_floor_refuses_the_blocked_release(fleet: tuple[ControllerSide, AgentProcess],
                                                  digits_mlp: SampleModel) -> None:
    controller, agent = fleet
    agent.start()
    release1 = controller.publish_release(digits_mlp, "1", 1)
    release2 = controller.publish_release(digits_mlp, "2", 2)
    v2 = controller.assign(release2)
    wait_for(lambda: controller.event("committed", v2), 120, "v2 committed", agent.log)
    trust = agent.state_dir / "trust.json"
    assert json.loads(trust.read_bytes())["release_floors"] == {}  # commit alone does not raise it

    controller.repo.set_release_floor("digits", 2)
    v3 = controller.assign(release1)  # e.g. a rollback to release 1, which is known bad
    rejected = wait_for(lambda: controller.event("assignment_rejected"), 60, "the rejection", agent.log)
    assert rejected.reason == "release_counter_downgrade", rejected
    assert "assignment_received" not in controller.event_kinds(v3)
    assert agent.infer(digits_mlp)[1] == "2"

    v4 = controller.assign(release2)  # the good release again: accepted, and the floor persisted
    wait_for(lambda: json.loads(trust.read_bytes())["assignment_version"] == v4, 60, "v4 accepted", agent.log)
    assert json.loads(trust.read_bytes())["release_floors"] == {"digits": 2}
    assert agent.terminate() == 0
