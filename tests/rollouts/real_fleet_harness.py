"""The controller side in this process and a fleet of real `edgefleet-agent run` daemons beside it.

One Mosquitto, one signed image repository over HTTP, this package's bridge, engine and director assigner,
and an `AgentProcess` per device. Every device is tagged "lab" and starts with nothing installed. Tests
choose the fleet's size, the agents' options, the rollouts' waves and how long a device may take.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from types import SimpleNamespace, TracebackType
from typing import Any

from controller.mqtt import BridgeConfig, MqttBridge
from controller.rollouts import FileRolloutStore, RolloutEngine, RolloutRecord, RolloutState
from controller.rollouts.assigner import AssignmentPolicies, DirectorAssigner, FileAssignmentLedger
from controller.rollouts.plan import DeviceInfo, HealthPolicy, RolloutSpec, Selector, WaveSpec
from controller.rollouts.signals import DeviceState
from controller.sample_models import SampleModel
from manifests.assignment import ProbationPolicy, ReleaseRef, TargetPin
from tests.daemon.fleet import AgentProcess, ControllerSide, wait_for

from .fleet_harness import ControllerFleetView

TAGS = frozenset({"lab"})


class RealFleet:
    """Controller, repository and agents for `devices`; `agent_options` go into every agent's config."""

    def __init__(self, tmp: Path, port: int, devices: list[str], **agent_options: Any) -> None:
        self.tmp = tmp
        self.devices = devices
        self.repo = ControllerSide(tmp / "repo-side", port, "repository")
        self.view = ControllerFleetView({d: TAGS for d in devices})
        for d in devices:  # nothing installed yet: the agents start empty
            self.view.devices[d] = DeviceInfo(d, online=False, tags=TAGS)
        self.pins: dict[ReleaseRef, tuple[TargetPin, ...]] = {}
        self.bridge = MqttBridge(BridgeConfig("127.0.0.1", port, client_id="ctl", share_group=None), self.view)
        self.bridge.start()
        keys = self.repo.keys
        assigner = DirectorAssigner(
            self.ledger(), keys.signers("director"), self.bridge, self.pins.__getitem__,
            policies_for=lambda release, rollout: AssignmentPolicies(probation=ProbationPolicy(window_s=1.0)),
            director_roots=keys.root_history("director")[1:])
        self.engine = RolloutEngine(FileRolloutStore(tmp / "rollouts"), self.view, assigner)
        self.view.engine = self.engine
        self.stop = threading.Event()
        threading.Thread(target=self.engine.run, args=(self.stop, 0.2), daemon=True).start()
        self.agents: dict[str, AgentProcess] = {}
        for d in devices:
            side = SimpleNamespace(device_id=d, base_url=self.repo.base_url, roots=self.repo.roots)
            (tmp / d).mkdir()
            self.agents[d] = AgentProcess(tmp / d, side, port, **agent_options)  # type: ignore[arg-type]

    def __enter__(self) -> RealFleet:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.close()

    def ledger(self) -> FileAssignmentLedger:
        """The director's ledger: the latest assignment signed for each device."""
        return FileAssignmentLedger(self.tmp / "ledger")

    def start_agents(self, pacing_s: float = 0.0) -> None:
        """Start every agent, `pacing_s` apart, and wait until the bridge has seen each one online."""
        for agent in self.agents.values():
            agent.start()
            time.sleep(pacing_s)
        wait_for(lambda: all(self.view.devices[d].online for d in self.devices), 90, "all agents online",
                 lambda: self.logs([d for d in self.devices if not self.view.devices[d].online]))

    def publish(self, model: SampleModel, version: str, counter: int, model_bytes: bytes | None = None) -> None:
        """Sign `model` (or `model_bytes` in its place) into the repository as digits `version`."""
        targets = self.repo.publish_release(model, version, counter, model_bytes=model_bytes)
        self.pins[ReleaseRef("digits", version)] = tuple(TargetPin(t.name, t.length, t.sha256) for t in targets)

    def rollout(self, rollout_id: str, version: str, waves: tuple[WaveSpec, ...],
                device_timeout_s: float = 90) -> RolloutRecord:
        spec = RolloutSpec(ReleaseRef("digits", version), Selector(tags=TAGS), waves,
                           HealthPolicy(device_timeout_s=device_timeout_s, min_accuracy=0.9))
        return self.engine.create(rollout_id, spec, "alice")

    def settle(self, rollout_id: str, timeout_s: float = 100) -> RolloutRecord:
        """Wait for the rollout to complete or halt; on time-out, show the unfinished agents' logs."""
        def done() -> RolloutRecord | None:
            record = self.engine.store.load(rollout_id)
            return record if record.state in (RolloutState.COMPLETED, RolloutState.HALTED) else None

        def unfinished_logs() -> str:
            record = self.engine.store.load(rollout_id)
            late = [d for d, p in record.devices.items() if p.state != DeviceState.SUCCEEDED]
            return f"rollout {record.state.value} wave {record.wave}: {len(late)} unfinished\n" + self.logs(late)

        record: RolloutRecord = wait_for(done, timeout_s, f"rollout {rollout_id} to settle", unfinished_logs)
        return record

    def logs(self, devices: list[str]) -> str:
        return "\n".join(f"--- {d}\n{self.agents[d].log()[-1500:]}" for d in devices[:3])

    def close(self) -> None:
        self.stop.set()
        for agent in self.agents.values():
            agent.kill()
            agent.notify.close()
        self.bridge.stop()
        self.repo.close()
