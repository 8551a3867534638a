"""`edgefleet-agent run --config DEVICE.toml`: the device daemon (see `agent.daemon`).

Exit status: 0 after a clean stop (SIGTERM/SIGINT), 1 when the update worker died (a service
manager should restart the agent), 2 for a configuration or enrollment problem, or identity files
other users can read (restarting unchanged will not help; the message says what to fix).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, default=None,
                        help="device config file (.toml or .json); EDGEFLEET_AGENT_* variables override it")
    parser.add_argument("--log-level", default=None, help="overrides log_level from the config")


def run(args: argparse.Namespace, crash_hook: Callable[[str], None] | None = None) -> int:
    """`crash_hook` is for fault-injection harnesses (see `Daemon`); the command line never sets it."""
    from agent.daemon.config import load_config
    from agent.daemon.daemon import Daemon
    from agent.daemon.errors import DaemonError

    try:
        config = load_config(args.config)
    except DaemonError as e:
        print(f"edgefleet-agent: {e}", file=sys.stderr)
        return 2
    level = (args.log_level or config.log_level).upper()
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return Daemon(config, crash_hook=crash_hook).run()
    except DaemonError as e:
        logging.getLogger("agent.daemon").error("%s", e)
        return 2
