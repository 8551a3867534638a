"""A controller (bridge + rollout engine + director signing) and a fleet of simulated agents over MQTT.

The devices are real `AgentSession`s with real persisted outboxes, and they check every assignment with
the manifests' director verification (signature, device id, version, expiry). What they simulate is the
update itself: each release number maps to a scripted outcome, reported through the same events the
update engine's `MqttReporter` sends.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

from agent import wire
from agent.mqtt import AgentSession, Outbox, SessionConfig
from controller.mqtt import BridgeConfig, MqttBridge
from controller.rollouts import FileRolloutStore, RolloutEngine
from controller.rollouts.assigner import DirectorAssigner, FileAssignmentLedger
from controller.rollouts.plan import DeviceInfo, Selector
from manifests.assignment import Assignment, ReleaseRef, TargetPin
from manifests.errors import TrustError
from manifests.keyring import Keyring
from manifests.state import TrustedState, enroll
from manifests.verify import check_assignment

BASE = ReleaseRef("digits", "1")
# release version -> scripted device behaviour
GOOD, GATE_FAILS, PROBATION_REGRESSES = "2", "3", "4"


class ControllerFleetView:
    """FleetSink + FleetView: presence and active release from what devices report."""

    def __init__(self, tags: Mapping[str, frozenset[str]]) -> None:
        self.lock = threading.Lock()
        self.devices = {d: DeviceInfo(d, online=False, tags=t, active_release=BASE) for d, t in tags.items()}
        self.engine: RolloutEngine | None = None

    def targeted(self, selector: Selector) -> Mapping[str, DeviceInfo]:
        with self.lock:
            return {d: info for d, info in self.devices.items() if selector.matches(info)}

    def on_status(self, status: wire.Status) -> None:
        if self.engine is not None:
            self.engine.handle_status(status)
        if status.active is None or status.device_id not in self.devices:
            return
        with self.lock:
            self.devices[status.device_id] = replace(
                self.devices[status.device_id], active_release=ReleaseRef(status.active.model, status.active.version))

    def on_event(self, event: wire.Event) -> None:
        if self.engine is not None:
            self.engine.handle_event(event)

    def on_presence(self, presence: wire.Presence) -> None:
        with self.lock:
            if presence.device_id in self.devices:
                self.devices[presence.device_id] = replace(self.devices[presence.device_id],
                                                           online=presence.state == "online")


@dataclass
class Controller:
    """Everything a controller process holds; `kill()` drops it without any clean-up."""

    port: int
    state_dir: Path
    keyring: Keyring
    fleet: ControllerFleetView
    bridge: MqttBridge = field(init=False)
    engine: RolloutEngine = field(init=False)
    stop_event: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    def __post_init__(self) -> None:
        self.bridge = MqttBridge(BridgeConfig("127.0.0.1", self.port, client_id="ctl", reconnect_min_s=1,
                                              reconnect_max_s=2, share_group=None), self.fleet)
        assigner = DirectorAssigner(FileAssignmentLedger(self.state_dir / "ledger"),
                                    self.keyring.signers("director"), self.bridge, _pins)
        self.engine = RolloutEngine(FileRolloutStore(self.state_dir / "rollouts"), self.fleet, assigner)
        self.fleet.engine = self.engine

    def start(self) -> Controller:
        self.bridge.start()
        self.thread = threading.Thread(target=self.engine.run, args=(self.stop_event, 0.1), daemon=True)
        self.thread.start()
        return self

    def kill(self) -> None:
        self.stop_event.set()
        if self.thread is not None:
            self.thread.join(timeout=10)
        self.bridge.stop()


def _pins(release: ReleaseRef) -> tuple[TargetPin, ...]:
    prefix = f"models/{release.model}/{release.version}"
    return (TargetPin(f"{prefix}/ort-fp32.onnx", 1000, "a" * 64), TargetPin(f"{prefix}/golden.npz", 100, "b" * 64))


class SimDevice:
    """One agent: session + director check + a worker that plays the scripted update."""

    def __init__(self, device_id: str, port: int, keyring: Keyring, state_dir: Path) -> None:
        self.device_id = device_id
        now = datetime.now(timezone.utc)
        self.trust: TrustedState = enroll(device_id, keyring.root_history("director")[0],
                                          keyring.root_history("image")[0], now)
        self.accepted: list[Assignment] = []
        self.active = BASE
        self.work: queue.SimpleQueue[Assignment | None] = queue.SimpleQueue()
        self.lock = threading.Lock()
        self.session = AgentSession(
            SessionConfig("127.0.0.1", port, device_id, reconnect_min_s=1, reconnect_max_s=2),
            Outbox(state_dir / device_id / "outbox"), self)
        self.worker = threading.Thread(target=self._work, daemon=True)

    def start(self) -> SimDevice:
        self.worker.start()
        self.session.start()
        return self

    def stop(self) -> None:
        self.work.put(None)
        self.session.stop(timeout_s=0.5)

    def receive_assignment(self, payload: bytes) -> None:
        """AssignmentPort: the real director checks, then queue for the worker (never work on paho's thread)."""
        with self.lock:
            try:
                checked = check_assignment(payload, self.trust, datetime.now(timezone.utc))
            except TrustError as e:
                if e.reason.value == "replayed":  # the retained copy of what we already run
                    return
                raise
            self.trust = replace(self.trust, assignment_version=checked.assignment.version)
            self.accepted.append(checked.assignment)
        self.work.put(checked.assignment)

    def releases(self) -> list[str]:
        with self.lock:
            return [a.release.version for a in self.accepted]

    def _work(self) -> None:
        while True:
            a = self.work.get()
            if a is None:
                return
            self._play(a)

    def _play(self, a: Assignment) -> None:
        common = {"assignment_version": a.version, "rollout_id": a.rollout_id, "model": a.release.model,
                  "version": a.release.version}
        ev = self.session.publish_event
        ev("assignment_received", **common)
        ev("download_started", **common)
        behaviour = a.release.version
        if behaviour == GATE_FAILS:
            ev("gate_failed", reason="accuracy_below_min", details={"accuracy": 0.41}, **common)
        else:
            ev("gate_passed", details={"accuracy": 0.97, "agreement": 0.99, "latency_regression_ratio": 1.01},
               **common)
            ev("activated", **common)
            if behaviour == PROBATION_REGRESSES:
                ev("probation_failed", reason="error rate 0.3 above 0.01",
                   details={"error_rate": 0.3, "latency_p99_ratio": 2.6}, **common)
                ev("rolled_back", **common)
            else:
                ev("probation_passed", details={"error_rate": 0.0, "latency_p99_ratio": 1.02}, **common)
                ev("committed", **common)
                self.active = a.release
        self.session.publish_status(
            "IDLE", active=wire.ActiveModel(self.active.model, self.active.version, "ort-fp32", "a" * 64),
            assignment_version=a.version, rollout_id=a.rollout_id)
