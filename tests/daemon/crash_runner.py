"""`edgefleet-agent run` with a crash hook, for kill -9 tests of the daemon's own steps.

    python -m tests.daemon.crash_runner --config DEVICE.toml

The same start-up and the same `Daemon` as `agent.daemon.cli.run`; with EDGEFLEET_TEST_KILL_AT=<step>
the process SIGKILLs itself when the daemon reaches that step ("verified", "pending", "handled",
"committed": see `UpdateWorker.handle` in agent/daemon/updates.py), exactly like a power cut there.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

from agent.daemon import cli

KILL_ENV = "EDGEFLEET_TEST_KILL_AT"


def crash_hook(step: str) -> None:
    if os.environ.get(KILL_ENV) == step:
        os.kill(os.getpid(), signal.SIGKILL)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="crash_runner")
    cli.add_arguments(parser)
    return cli.run(parser.parse_args(argv), crash_hook=crash_hook)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
