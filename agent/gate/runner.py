"""Run the gate's measurements in a child process with a timeout, and judge the result.

The agent never loads a candidate in its own process before the gate passed: a runtime that
segfaults or exhausts memory on a bad model would take the agent (and the model it serves) down.
The child writes its report to a file; a child that dies or overruns is reported as
`crashed: ...` / `timeout: ...`, which fails the gate like any other reason.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from agent.gate.child import GateRequest
from agent.gate.report import GateReport, GateSettings, ModelFigures, Verdict, judge
from manifests.assignment import GatePolicy

MAX_REPORT_BYTES = 1024 * 1024
CHILD_COMMAND: tuple[str, ...] = (sys.executable, "-m", "agent.gate.child")


@dataclass(frozen=True)
class GateInput:
    """What to gate: the candidate file and, when there is one, the model currently served."""

    candidate: str  # signed target name
    runtime: str
    precision: str
    device: str
    model_path: Path
    golden_path: Path
    hardware_class: str
    current_path: Path | None = None
    current_runtime: str | None = None
    current_device: str = "cpu"
    runtime_extra: Mapping[str, str] = field(default_factory=dict)  # RuntimeOptions.extra for the candidate


@dataclass(frozen=True)
class GateOutcome:
    report: GateReport
    verdict: Verdict


class Gate(Protocol):
    def evaluate(self, gate_input: GateInput, policy: GatePolicy) -> GateOutcome: ...


class ProcessGate:
    def __init__(self, settings: GateSettings | None = None, work_dir: Path | None = None,
                 command: Sequence[str] = CHILD_COMMAND, cache_dir: Path | None = None,
                 intra_op_threads: int | None = None) -> None:
        self.settings = settings or GateSettings()
        self.work_dir = work_dir
        self.command = tuple(command)
        self.cache_dir = cache_dir
        self.intra_op_threads = intra_op_threads

    def evaluate(self, gate_input: GateInput, policy: GatePolicy) -> GateOutcome:
        report = self.measure(gate_input)
        return GateOutcome(report, judge(report, policy, self.settings))

    def measure(self, g: GateInput) -> GateReport:
        s = self.settings
        started = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="gate-", dir=self.work_dir) as tmp:
            report_path = Path(tmp) / "report.json"
            request = GateRequest(
                candidate=g.candidate, runtime=g.runtime, precision=g.precision, device=g.device,
                model_path=str(g.model_path), golden_path=str(g.golden_path), report_path=str(report_path),
                hardware_class=g.hardware_class,
                current_path=str(g.current_path) if g.current_path is not None else None,
                current_runtime=g.current_runtime, current_device=g.current_device,
                latency_rounds=s.latency_rounds, latency_budget_s=s.latency_budget_s,
                warmup_rounds=s.warmup_rounds, intra_op_threads=self.intra_op_threads,
                cache_dir=str(self.cache_dir) if self.cache_dir is not None else None,
                runtime_extra=dict(g.runtime_extra),
            )
            request_path = Path(tmp) / "request.json"
            request_path.write_text(request.to_json(), encoding="utf-8")
            proc = subprocess.Popen([*self.command, str(request_path)], stdin=subprocess.DEVNULL,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            try:
                _, stderr = proc.communicate(timeout=s.timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
                return self._failed(g, f"timeout: gate child ran past {s.timeout_s} s", started)
            if proc.returncode != 0 or not report_path.exists():
                return self._failed(g, f"crashed: {_describe_exit(proc.returncode)}; "
                                       f"{stderr.decode('utf-8', 'replace').strip()[-400:]}", started)
            try:
                data = report_path.read_bytes()
                if len(data) > MAX_REPORT_BYTES:
                    raise ValueError(f"report exceeds {MAX_REPORT_BYTES} bytes")
                return GateReport.from_dict(json.loads(data))
            except (ValueError, KeyError, TypeError) as e:
                return self._failed(g, f"crashed: unreadable gate report: {e}", started)

    @staticmethod
    def _failed(g: GateInput, error: str, started: float) -> GateReport:
        return GateReport(candidate=g.candidate, runtime=g.runtime, precision=g.precision,
                          hardware_class=g.hardware_class, measured=ModelFigures(),
                          duration_s=time.monotonic() - started, error=error)


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "no exit status"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"
