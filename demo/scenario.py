"""The demo scenario: every step acts on the real system, then checks what the fleet actually did.

| step | action                                                             | expected                                   |
|------|--------------------------------------------------------------------|--------------------------------------------|
| 1    | start the embedded broker and the controller (SQLite, local store) | API and bridge up                          |
| 2    | train digits v1, v2 and the scrambled v3                            | models on disk                             |
| 3    | push v1 (variants built, signed, published)                        | release published                          |
| 4    | enroll N devices on fake Jetson / Pi 5 / Intel boards, start agents | all online                                 |
| 5    | roll out v1 to the fleet in one wave                               | every device serves v1                     |
| 6    | push v2, roll it out in waves: a canary, then half, then all       | waves in order; every device serves v2     |
| 7    | push v3, roll it out with a canary                                 | the canary's gate refuses it; the rollout halts in wave 1; no other device is assigned v3; the canary still serves v2 |
| 8    | abort the halted rollout                                           | aborted                                    |
| 9    | roll v2 back to v1 on one hardware class                           | that class serves v1, the others stay on v2 |
| 10   | inference traffic ran through every swap                           | no failed request                          |

A step that fails is reported with what was expected and what was found; later steps that depend on
it are skipped, and the demo exits non-zero.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select

from controller.api_client import ApiClientError
from controller.db.models import Device
from controller.rollouts import RolloutRecord, RolloutSpec, RolloutState, Selector, WaveSpec
from controller.rollouts.signals import DeviceState
from controller.sample_models import SampleModel
from demo.devices import DemoDevice
from demo.host import ControllerHost
from manifests.assignment import ReleaseRef

MODEL = "digits"
BOARDS = (("jetson-orin", "orin"), ("raspberry-pi-5", "pi5"), ("intel-nuc", "nuc"))


class StepFailed(Exception):
    pass


@dataclass
class StepResult:
    number: int
    title: str
    ok: bool
    detail: str
    seconds: float


@dataclass
class Scenario:
    host: ControllerHost
    work_dir: Path
    device_count: int = 6
    timeout_s: float = 90.0
    say: Callable[[str], None] = print
    results: list[StepResult] = field(default_factory=list)
    devices: list[DemoDevice] = field(default_factory=list)
    models: dict[str, SampleModel] = field(default_factory=dict)
    rollouts: dict[str, str] = field(default_factory=dict)

    # --- helpers -------------------------------------------------------------------------------------

    def step(self, title: str, action: Callable[[], str]) -> bool:
        number = len(self.results) + 1
        self.say(f"[bold]{number:>2}. {title}[/bold]")
        started = time.monotonic()
        try:
            detail, ok = action(), True
        except (StepFailed, ApiClientError, RuntimeError, TimeoutError, ValueError, KeyError, OSError) as e:
            detail, ok = f"{type(e).__name__}: {e}" if not isinstance(e, StepFailed) else str(e), False
        seconds = time.monotonic() - started
        self.results.append(StepResult(number, title, ok, detail, seconds))
        mark = "[green]ok[/green]" if ok else "[red]FAILED[/red]"
        self.say(f"    {mark} ({seconds:.1f} s) {detail}")
        return ok

    def _wait(self, what: str, condition: Callable[[], Any], timeout_s: float | None = None) -> Any:
        deadline = time.monotonic() + (timeout_s or self.timeout_s)
        while time.monotonic() < deadline:
            value = condition()
            if value:
                return value
            time.sleep(0.25)
        raise StepFailed(f"timed out waiting for {what}")

    def fleet_rows(self) -> dict[str, Device]:
        with self.host.ctx.session_factory() as session:
            return {d.id: d for d in session.scalars(select(Device))}

    def versions(self) -> dict[str, str | None]:
        return {d: row.current_version for d, row in self.fleet_rows().items()}

    def _push(self, version: str) -> str:
        model = self.models[version]
        client = self.host.client()
        client.request("POST", "/api/v1/models", form={"name": MODEL, "version": version},
                       files={"model": ("model.onnx", model.path.read_bytes()),
                              "golden": ("golden.npz", model.golden_path.read_bytes())})
        release = self._wait(f"the build of {MODEL} {version}", lambda: (
            r if (r := client.request("GET", f"/api/v1/models/{MODEL}/{version}"))["status"]
            not in ("registered", "queued", "building") else None), timeout_s=120)
        if release["status"] != "published":
            raise StepFailed(f"{MODEL} {version} ended {release['status']}: {release.get('error')}")
        return str(release.get("progress_message", "published"))

    def _rollout(self, rollout_id: str, version: str, selector: Selector, waves: Sequence[WaveSpec],
                 rollback: bool = False) -> RolloutRecord:
        spec = RolloutSpec(ReleaseRef(MODEL, version), selector, tuple(waves), rollback=rollback)
        self.rollouts[rollout_id] = version
        return self.host.engine.create(rollout_id, spec, actor="demo")

    @staticmethod
    def _failures(record: RolloutRecord) -> str:
        failed = [f"{d}: {p.reason or p.state.value}" for d, p in sorted(record.devices.items()) if p.state.failure]
        return ("; failed devices: " + " | ".join(f[:300] for f in failed)) if failed else ""

    def _until_settled(self, rollout_id: str) -> RolloutRecord:
        def settled() -> RolloutRecord | None:
            record = self.host.engine.store.load(rollout_id)
            return record if record.state.terminal or record.state == RolloutState.HALTED else None

        record: RolloutRecord = self._wait(f"rollout {rollout_id} to settle", settled)
        return record

    # --- the steps -----------------------------------------------------------------------------------

    def start_controller(self) -> str:
        self.host.start()
        return f"controller {self.host.url}, embedded broker mqtt://127.0.0.1:{self.host.broker_port}"

    def train(self) -> str:
        from demo.models import build_releases

        self.models = build_releases(self.work_dir / "models")
        return (f"v1 accuracy {self.models['1'].accuracy:.3f}, v2 {self.models['2'].accuracy:.3f}, "
                "v3 = v2 with shuffled weights")

    def push_v1(self) -> str:
        return self._push("1")

    def enroll(self) -> str:
        client = self.host.client()
        for index in range(self.device_count):
            board, prefix = BOARDS[index % len(BOARDS)]
            device = DemoDevice(f"{prefix}-{index // len(BOARDS) + 1}", board, ["demo"], self.work_dir / "devices")
            token = client.request("POST", "/api/v1/enrollment-tokens", json_body={"tags": ["demo"], "ttl_s": 600})
            device.enroll(self.host.url, token["token"])
            device.configure(self.host.url)
            device.start()
            self.devices.append(device)
        ids = {d.device_id for d in self.devices}

        def all_online() -> bool:
            dead = [d.device_id for d in self.devices if not d.alive()]
            if dead:
                raise StepFailed(f"agent process exited: {dead}; log: {self.devices[0].log_tail(800)}")
            rows = self.fleet_rows()
            return all(rows.get(i) is not None and rows[i].online for i in ids)

        self._wait("every device online", all_online)
        classes = sorted({row.hardware_class for row in self.fleet_rows().values()})
        return f"{len(ids)} agents online; hardware classes: {', '.join(classes)}"

    def rollout_v1(self) -> str:
        self._rollout("r-v1", "1", Selector(tags=frozenset({"demo"})), [WaveSpec(percent=100, soak_s=1)])
        record = self._until_settled("r-v1")
        if record.state != RolloutState.COMPLETED:
            raise StepFailed(f"r-v1 ended {record.state.value}: {record.reason}{self._failures(record)}")
        versions = self.versions()
        if set(versions.values()) != {"1"}:
            raise StepFailed(f"expected every device on v1, found {versions}")
        model = self.models["1"]
        for device in self.devices:
            device.start_traffic(model.golden.inputs, model.input_name)
        return f"{len(versions)} devices serve v1"

    def rollout_v2(self) -> str:
        self._push("2")
        self._rollout("r-v2", "2", Selector(tags=frozenset({"demo"})),
                      [WaveSpec(count=1, soak_s=2), WaveSpec(percent=50, soak_s=2), WaveSpec(percent=100, soak_s=1)])
        record = self._until_settled("r-v2")
        if record.state != RolloutState.COMPLETED:
            raise StepFailed(f"r-v2 ended {record.state.value}: {record.reason}{self._failures(record)}")
        sizes = [len(record.wave_devices(i)) for i in range(len(record.spec.waves))]
        starts = [t for t in record.history if t.to_state == RolloutState.RUNNING]
        versions = self.versions()
        if set(versions.values()) != {"2"}:
            raise StepFailed(f"expected every device on v2, found {versions}")
        canary = next(iter(record.wave_devices(0)))
        return f"waves of {sizes} devices (canary {canary}), {len(starts)} wave starts; every device serves v2"

    def rollout_v3(self) -> str:
        self._push("3")
        before = self.versions()
        self._rollout("r-v3", "3", Selector(tags=frozenset({"demo"})),
                      [WaveSpec(count=1, soak_s=2), WaveSpec(percent=100, soak_s=1)])
        record = self._until_settled("r-v3")
        canary = next(iter(record.wave_devices(0)))
        problems = []
        if record.state != RolloutState.HALTED or record.wave != 0:
            problems.append(f"expected halted in wave 1, found {record.state.value} in wave {record.wave + 1}")
        canary_progress = record.devices[canary]
        if canary_progress.state != DeviceState.FAILED or "gate" not in (canary_progress.reason or ""):
            problems.append(f"expected the canary {canary} to fail its gate, found {canary_progress.state.value}: "
                            f"{canary_progress.reason}")
        touched = [d for d, p in record.devices.items() if d != canary and p.state != DeviceState.PLANNED]
        if touched:
            problems.append(f"devices outside the canary wave were assigned v3: {touched}")
        after = self.versions()
        if after != before:
            problems.append(f"device versions changed: before {before}, after {after}")
        canary_device = next(d for d in self.devices if d.device_id == canary)
        _, served = canary_device.infer(self.models["2"].golden.inputs[:4], self.models["2"].input_name)
        if served != "2":
            problems.append(f"the canary answers with version {served}, expected 2")
        if problems:
            raise StepFailed("; ".join(problems))
        return f"canary {canary} refused v3 ({(canary_progress.reason or '')[:160]}); rollout halted: {record.reason}"

    def abort_v3(self) -> str:
        record = self.host.engine.command("r-v3", "abort", "demo", "v3 fails its gate on the canary")
        if record.state != RolloutState.ABORTED:
            raise StepFailed(f"expected aborted, found {record.state.value}")
        return "r-v3 aborted by the operator"

    def rollback_class(self) -> str:
        rows = self.fleet_rows()
        pi_class = next(row.hardware_class for d, row in rows.items() if d.startswith("pi5"))
        # A fleet rollback: v1 already ran on these devices, so the gate waives its accuracy drop vs v2.
        self._rollout("r-rollback-pi", "1", Selector(hardware_classes=frozenset({pi_class})),
                      [WaveSpec(percent=100, soak_s=1)], rollback=True)
        record = self._until_settled("r-rollback-pi")
        if record.state != RolloutState.COMPLETED:
            raise StepFailed(f"r-rollback-pi ended {record.state.value}: {record.reason}{self._failures(record)}")
        versions = self.versions()
        expected = {d: ("1" if row.hardware_class == pi_class else "2") for d, row in rows.items()}
        if versions != expected:
            raise StepFailed(f"expected {expected}, found {versions}")
        return f"{pi_class} back on v1 ({len(record.devices)} devices); the others stay on v2"

    def traffic_clean(self) -> str:
        requests = sum(d.traffic.requests for d in self.devices)
        errors = {d.device_id: d.traffic.errors for d in self.devices if d.traffic.errors}
        if errors:
            raise StepFailed(f"failed inference requests during the swaps: {errors} of {requests}")
        if requests == 0:
            raise StepFailed("no inference request was answered")
        return f"{requests} requests answered across every hot swap, none failed"

    def run(self) -> bool:
        plan: list[tuple[str, Callable[[], str]]] = [
            ("Start the embedded broker and the controller", self.start_controller),
            ("Train digits v1, v2 and a scrambled v3", self.train),
            ("Push v1: build, sign and publish its variants", self.push_v1),
            (f"Enroll {self.device_count} devices on fake Jetson / Pi 5 / Intel boards", self.enroll),
            ("Roll out v1 to the fleet", self.rollout_v1),
            ("Push v2 and roll it out in waves behind a canary", self.rollout_v2),
            ("Push the bad v3: the canary's gate must stop it", self.rollout_v3),
            ("Abort the halted v3 rollout", self.abort_v3),
            ("Roll v2 back to v1 on one hardware class", self.rollback_class),
            ("No inference request failed during the swaps", self.traffic_clean),
        ]
        for title, action in plan:
            if not self.step(title, action) and action in (self.start_controller, self.train, self.push_v1,
                                                           self.enroll, self.rollout_v1):
                break  # later steps need this one
        return len(self.results) == len(plan) and all(r.ok for r in self.results)

    def stop(self) -> None:
        for device in self.devices:
            device.stop()
        self.host.stop()
