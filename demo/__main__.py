"""`python -m demo` (`make demo`, `edgefleet demo`): the whole loop on this machine, checked step by step.

Exit status 0 only when every step of `demo.scenario` behaved as expected; 1 otherwise, with the
failed step named; 2 for bad arguments. `--keep-running` leaves the controller, broker and agents up for
the dashboard until Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console

DEFAULT_STATE_DIR = Path("demo-state")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m demo", description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=6, help="simulated devices (at least 3; default 6)")
    parser.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR,
                        help="working folder, emptied at start (default ./demo-state)")
    parser.add_argument("--keep-running", action="store_true", help="leave everything up for the dashboard")
    parser.add_argument("--timeout-s", type=float, default=90.0, help="longest wait for one step's outcome")
    parser.add_argument("--variants", default="",
                        help="comma-separated variants to build (default: all, e.g. onnxruntime-fp32,openvino-fp16)")
    parser.add_argument("--port", type=int, default=0, help="controller API port (default: a free one)")
    return parser


def run(devices: int, state_dir: Path, keep_running: bool = False, timeout_s: float = 90.0, port: int = 0,
        variants: Sequence[str] = (), console: Console | None = None) -> int:
    from controller.auth import create_api_token
    from demo.host import ControllerHost
    from demo.report import print_summary
    from demo.scenario import Scenario
    from manifests.assignment import GatePolicy, ProbationPolicy

    console = console or Console(width=None if sys.stdout.isatty() else 160)
    if devices < 3:
        console.print("[red]error:[/red] --devices must be at least 3 (one per board type)")
        return 2
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("amqtt", "asyncio", "transitions"):
        logging.getLogger(noisy).setLevel(logging.CRITICAL)
    shutil.rmtree(state_dir, ignore_errors=True)
    state_dir.mkdir(parents=True)
    # Short probation and a lenient latency budget: a demo on a shared two-core machine, not a fleet.
    host = ControllerHost(state_dir.resolve(), api_port=port, variants=tuple(variants),
                          gate=GatePolicy(min_accuracy=0.8, min_agreement=0.9, max_latency_regression_ratio=4.0),
                          probation=ProbationPolicy(window_s=3.0, max_latency_p99_ratio=10.0))
    scenario = Scenario(host, state_dir.resolve(), device_count=devices, timeout_s=timeout_s,
                        say=console.print)
    started = time.monotonic()
    ok = False
    try:
        ok = scenario.run()
        if host.app is not None and scenario.results and scenario.results[0].ok:
            print_summary(scenario, console)
            with host.ctx.session_factory() as session:
                _, token = create_api_token(session, name="demo-operator", role="operator")
                session.commit()
            console.print(f"dashboard: [link]{host.url}/ui/[/link]  (sign in with the operator token {token})")
        elapsed = time.monotonic() - started
        if ok:
            console.print(f"[bold green]demo passed[/bold green] in {elapsed:.0f} s")
        else:
            failed = [r for r in scenario.results if not r.ok]
            console.print(f"[bold red]demo FAILED[/bold red] after {elapsed:.0f} s: " + "; ".join(
                f"step {r.number} ({r.title}): {r.detail}" for r in failed))
        if keep_running:
            console.print("everything stays up; Ctrl-C to stop")
            stop = threading.Event()
            signal.signal(signal.SIGTERM, lambda *_: stop.set())
            with contextlib.suppress(KeyboardInterrupt):
                stop.wait()
    finally:
        scenario.stop()
    return 0 if ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # One BLAS thread: training the models with a thread pool on a busy two-core machine is 10x slower.
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(name, "1")
    variants = tuple(v.strip() for v in args.variants.split(",") if v.strip())
    return run(args.devices, args.state_dir, args.keep_running, args.timeout_s, args.port, variants)


if __name__ == "__main__":
    sys.exit(main())
