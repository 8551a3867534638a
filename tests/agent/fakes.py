"""Fakes of the update engine's own ports, and a plan builder for table-driven engine tests.

Targets are real files served from a folder through `file://` (so the real stager and slot store run);
the gate, activator and probation are scripted per target so each test can say which variant fails.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from agent.engine import ActiveModel, EngineConfig, ProbationResult, UpdateEngine, UpdateEvent
from agent.gate import GateInput, GateOutcome, GateReport, ModelFigures, Verdict
from agent.hardware import HardwareProfile, RuntimeInventory
from agent.staging import BaseUrlLocator, StagingConfig
from agent.state import State
from manifests.assignment import Assignment, GatePolicy, ProbationPolicy, ReleaseRef, TargetPin
from manifests.verify import SignedTarget, VerifiedPlan

DEVICE_ID = "edge-001"

INTEL_VNNI = HardwareProfile(
    arch="x86_64", cpu_model="Intel Xeon", cpu_flags=frozenset({"avx2", "avx512f", "avx512_vnni"}), cores=4,
    memory_mb=8192,
    runtimes=RuntimeInventory({"onnxruntime": "1.32.0", "openvino": "2026.4.1"}, ("CPUExecutionProvider",),
                              ("CPU",)))


def variant(model: str, version: str, variant_id: str, data: bytes, **custom: Any) -> tuple[SignedTarget, bytes]:
    c = {"kind": "variant", "model": model, "version": version, "release_counter": 1, "runtime": "onnxruntime",
         "precision": "fp32", "arch": "x86_64", **custom}
    name = f"models/{model}/{version}/{variant_id}"
    return SignedTarget(name, len(data), hashlib.sha256(data).hexdigest(), c), data


def golden(model: str, version: str, data: bytes) -> tuple[SignedTarget, bytes]:
    c = {"kind": "golden", "model": model, "version": version, "release_counter": 1}
    name = f"models/{model}/{version}/golden.npz"
    return SignedTarget(name, len(data), hashlib.sha256(data).hexdigest(), c), data


class Repo:
    """A folder of target bytes laid out by store key, reachable as file://."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.locator = BaseUrlLocator(root.as_uri())
        self.next_version = 1

    def put(self, target: SignedTarget, data: bytes) -> SignedTarget:
        path = self.root / target.store_key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return target

    def release(self, model: str, version: str, variant_ids: Sequence[str], **custom: Any) -> list[SignedTarget]:
        targets = []
        for vid in variant_ids:
            data = hashlib.sha256(f"{model}/{version}/{vid}".encode()).digest() * 2048
            targets.append(self.put(*variant(model, version, vid, data, **custom.get(vid, {}))))
        g = golden(model, version, hashlib.sha256(f"{model}/{version}/golden".encode()).digest() * 64)
        targets.append(self.put(*g))
        return targets

    def plan(self, targets: Sequence[SignedTarget], gate: GatePolicy | None = None,
             probation: ProbationPolicy | None = None, expires_in: timedelta = timedelta(days=1)) -> VerifiedPlan:
        _, model, version, _ = targets[0].name.split("/")
        issued = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(minutes=1)
        a = Assignment(device_id=DEVICE_ID, version=self.next_version, issued_at=issued,
                       expires_at=issued + expires_in, release=ReleaseRef(model, version),
                       targets=tuple(TargetPin(t.name, t.length, t.sha256) for t in targets),
                       gate=gate or GatePolicy(), probation=probation or ProbationPolicy(window_s=0.0))
        self.next_version += 1
        return VerifiedPlan(a, tuple(targets))


@dataclass
class ScriptedGate:
    """Passes every candidate except those named in `reject` (target name -> reason)."""

    reject: Mapping[str, str] = field(default_factory=dict)
    seen: list[GateInput] = field(default_factory=list)

    def evaluate(self, gate_input: GateInput, policy: GatePolicy) -> GateOutcome:
        self.seen.append(gate_input)
        assert gate_input.model_path.is_file() and gate_input.golden_path.is_file()
        report = GateReport(candidate=gate_input.candidate, runtime=gate_input.runtime,
                            precision=gate_input.precision, hardware_class=gate_input.hardware_class,
                            measured=ModelFigures(loaded=True, accuracy=0.97, agreement=1.0))
        reason = self.reject.get(gate_input.candidate)
        return GateOutcome(report, Verdict(reason is None, (reason,) if reason else ()))


@dataclass
class RecordingActivator:
    fail_activate: bool = False
    fail_rollback: bool = False
    serving: ActiveModel | None = None
    calls: list[str] = field(default_factory=list)

    def activate(self, model: ActiveModel) -> None:
        self.calls.append(f"activate:{model.ref.target}")
        assert model.path.is_file()
        if self.fail_activate:
            raise RuntimeError("model refused to warm up")
        self.serving = model

    def commit(self, model: ActiveModel) -> None:
        self.calls.append(f"commit:{model.ref.target}")

    def rollback(self, model: ActiveModel | None) -> None:
        self.calls.append(f"rollback:{model.ref.target if model else None}")
        if self.fail_rollback:
            raise RuntimeError("previous model did not load")
        self.serving = model


@dataclass
class ScriptedProbation:
    fail_reason: str | None = None

    def watch(self, model: ActiveModel, policy: ProbationPolicy) -> ProbationResult:
        return ProbationResult(self.fail_reason is None, self.fail_reason)


@dataclass
class EventLog:
    events: list[UpdateEvent] = field(default_factory=list)

    def report(self, event: UpdateEvent) -> None:
        self.events.append(event)

    def states(self) -> list[str]:
        return [e.state for e in self.events]


class SimulatedCrash(BaseException):
    """Raised by a hook to stop the driver dead, as a power cut would (nothing after it runs)."""


class Injector:
    """A crash hook that fails, crashes or hangs at one named step ("enter:GATE", "pointers", ...)."""

    def __init__(self, step: str | None = None, mode: str = "fail") -> None:
        self.step = step
        self.mode = mode
        self.release = threading.Event()
        self.fired = False

    def __call__(self, step: str) -> None:
        if step != self.step or self.fired:
            return
        self.fired = True
        if self.mode == "fail":
            raise RuntimeError(f"injected failure at {step}")
        if self.mode == "crash":
            raise SimulatedCrash(step)
        if self.mode == "hang":
            self.release.wait(30)
            raise RuntimeError(f"hung at {step}, released")


def make_engine(root: Path, repo: Repo, gate: ScriptedGate | None = None,
                activator: RecordingActivator | None = None, probation: ScriptedProbation | None = None,
                events: EventLog | None = None, hook: Callable[[str], None] | None = None,
                timeouts: Mapping[State, float] | None = None, max_store_count: int = 40,
                staging: StagingConfig | None = None) -> UpdateEngine:
    config = EngineConfig(staging=staging or StagingConfig(),state_timeouts_s=dict(timeouts) if timeouts else EngineConfig().state_timeouts_s,
                          probation_grace_s=min(timeouts.values()) if timeouts else 120.0, max_store_count=max_store_count)
    return UpdateEngine(root, INTEL_VNNI, repo.locator, gate or ScriptedGate(), activator or RecordingActivator(),
                        probation or ScriptedProbation(), events or EventLog(), config=config, crash_hook=hook)
