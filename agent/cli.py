"""`edgefleet-agent`: the device-side command line.

Each subcommand lives in the module that owns the feature; this file only wires them together so
that `edgefleet-agent --help` lists everything. Subcommand modules expose
`add_arguments(parser)` and `run(args) -> int` and must import nothing heavy at module level.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# subcommand -> (module, one-line help); each feature adds its own line.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "enroll": ("agent.enroll", "Enroll this device with a one-time token (key generated here, never sent)"),
    "profile": ("agent.hardware.cli", "Print this device's hardware profile as JSON"),
    "renew": ("agent.renewal", "Renew this device's certificate with a new key (--if-due: only when due)"),
    "serve": ("agent.server.cli", "Serve one model file over the Open Inference Protocol"),
    "run": ("agent.daemon.cli", "Run the device agent daemon (MQTT, updates, local inference server)"),
    "status": ("agent.daemon.status", "Show what this device serves and where its update stands"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgefleet-agent", description="edgefleet device agent")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module_name, help_text) in sorted(SUBCOMMANDS.items()):
        module = importlib.import_module(module_name)
        module.add_arguments(sub.add_parser(name, help=help_text, description=help_text))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    module = importlib.import_module(SUBCOMMANDS[args.command][0])
    code: int = module.run(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
