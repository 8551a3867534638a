"""The agent's update path as a separate process, for kill -9 tests.

    python -m tests.agent.kill_runner apply   ROOT REPO_URL PLAN.json GOLDEN.npz
    python -m tests.agent.kill_runner recover ROOT REPO_URL -          GOLDEN.npz

It runs the real engine (stager, process-isolated gate, slots, journal) with a session-backed
activator. With EDGEFLEET_TEST_KILL_AT=<step> it SIGKILLs itself when the engine reaches that step;
for "gate" it dies as soon as the gate's child process is running (its pid goes to
$EDGEFLEET_TEST_KILL_AT_PIDFILE, so the test can check that the orphan leaves too). On exit it prints
one JSON line: the outcome and what it serves (as a restarted server would: the `current` pointer).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil

from agent.engine import EngineConfig, UpdateEngine
from agent.gate import GateSettings, ProcessGate
from agent.hardware import probe
from agent.staging import BaseUrlLocator, StagingConfig
from agent.state.codec import plan_from_json
from tests.agent.fakes import EventLog
from tests.agent.serving import GoldenProbation, SessionActivator

KILL_ENV = "EDGEFLEET_TEST_KILL_AT"


def crash_hook(step: str) -> None:
    if os.environ.get(KILL_ENV) != step:
        return
    if step == "gate":
        def when_the_gate_child_runs() -> None:
            me = psutil.Process()
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                children = [c for c in me.children() if "agent.gate.child" in " ".join(c.cmdline())]
                if children:
                    Path(os.environ[KILL_ENV + "_PIDFILE"]).write_text(str(children[0].pid))
                    os.kill(os.getpid(), signal.SIGKILL)
                time.sleep(0.005)
        threading.Thread(target=when_the_gate_child_runs, daemon=True).start()
        return
    os.kill(os.getpid(), signal.SIGKILL)


def main(argv: list[str]) -> int:
    mode, root, repo_url, plan_path, golden_path = argv[1:6]
    with np.load(golden_path, allow_pickle=False) as g:
        golden_inputs = g["inputs"]
    activator = SessionActivator()
    config = EngineConfig(staging=StagingConfig(chunk_bytes=8 * 1024, reserve_bytes=0))
    engine = UpdateEngine(
        Path(root), probe(), BaseUrlLocator(repo_url),
        ProcessGate(GateSettings(latency_rounds=100, latency_budget_s=5.0, warmup_rounds=3), intra_op_threads=1),
        activator, GoldenProbation(activator, golden_inputs), EventLog(), config=config, crash_hook=crash_hook)
    recovered = engine.recover()
    outcome = recovered
    if mode == "apply":
        outcome = engine.apply(plan_from_json(Path(plan_path).read_text()))
    current = engine.slots.current()
    served_top1: list[int] | None = None
    if current is not None:  # what a restarted server would load and answer with
        activator.rollback(None)
        from agent.engine import ActiveModel

        activator.activate(ActiveModel(current, engine.slots.path(current)))
        assert activator.serving is not None
        spec = activator.serving.inputs[0]
        out = activator.serving.run({spec.name: golden_inputs.astype(spec.dtype)})
        served_top1 = np.argmax(next(iter(out.values())), axis=1).tolist()
    print(json.dumps({
        "status": outcome.status.value if outcome else None,
        "reason": outcome.reason if outcome else None,
        "current": current.target if current else None,
        "served_top1": served_top1,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
