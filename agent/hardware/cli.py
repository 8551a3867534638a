"""`edgefleet-agent profile`: print this device's hardware profile as JSON (what the controller sees)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from agent.hardware.probe import probe


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--root", type=Path, default=Path("/"),
                        help="filesystem root to probe (a mounted device image or a fake tree)")


def run(args: argparse.Namespace) -> int:
    print(json.dumps(probe(args.root).to_dict(), indent=2, sort_keys=True))
    return 0
