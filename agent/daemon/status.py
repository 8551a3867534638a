"""`edgefleet-agent status --config DEVICE.toml`: what this device runs and where its update stands.

Reads only the device's state folder (pointers, journal, outbox, trust state, the running daemon's
`daemon.json`) and, when the daemon serves, asks its `/v2/health/ready`. It works with the daemon
stopped, which is when an operator most needs it. Exit status: 0 when the daemon runs, 3 when it
does not (as `systemctl status`), 2 for a configuration problem.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import urllib.request
from pathlib import Path
from typing import Any

from agent.daemon.config import DaemonConfig

MAX_STATE_BYTES = 8 * 1024 * 1024


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, default=None, help="device config file (.toml or .json)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def collect(config: DaemonConfig) -> dict[str, Any]:
    """Everything the status command shows, as plain data."""
    from agent.slots import FileSlotStore, SlotError
    from agent.state import JournalError, JournalFile

    doc: dict[str, Any] = {"device_id": config.device_id, "state_dir": str(config.state_dir)}
    runtime = _read_json(config.runtime_path)
    pid = runtime.get("pid") if isinstance(runtime, dict) else None
    doc["daemon"] = {"running": isinstance(pid, int) and runtime.get("state") != "stopped" and _alive(pid),
                     **(runtime if isinstance(runtime, dict) else {})}
    slots = FileSlotStore(config.engine_root)
    for name, read in (("current", slots.current), ("previous", slots.previous)):
        try:
            ref = read()
            doc[name] = dataclasses.asdict(ref) if ref is not None else None
        except SlotError as e:
            doc[name] = {"error": str(e)}
    try:
        j = JournalFile(config.engine_root / "journal.json").load()
        doc["update"] = {"state": j.state.value, "deployment_id": j.deployment_id, "reason": j.reason,
                         "restarts": j.restarts, "flags": dataclasses.asdict(j.flags)}
    except JournalError as e:
        doc["update"] = {"error": str(e)}
    doc["outbox_pending"] = len(list(config.outbox_dir.glob("*.msg"))) if config.outbox_dir.is_dir() else 0
    trust = _read_json(config.trust_path)
    if isinstance(trust, dict):
        doc["trust"] = {k: trust.get(k) for k in ("assignment_version", "latest_known_time", "release_floors")
                        if k in trust}
    else:
        doc["trust"] = {"enrolled": False}
    url = doc["daemon"].get("server_url") if doc["daemon"]["running"] else None
    doc["server_ready"] = _ready(url) if isinstance(url, str) else None
    return doc


def run(args: argparse.Namespace) -> int:
    from agent.daemon.config import load_config
    from agent.daemon.errors import DaemonError

    try:
        config = load_config(args.config)
    except DaemonError as e:
        print(f"edgefleet-agent: {e}", file=sys.stderr)
        return 2
    doc = collect(config)
    if args.json:
        print(json.dumps(doc, sort_keys=True, default=str))
    else:
        print(render(doc))
    return 0 if doc["daemon"]["running"] else 3


def render(doc: dict[str, Any]) -> str:
    d = doc["daemon"]
    lines = [f"device     {doc['device_id']}  ({doc['state_dir']})",
             f"daemon     {'running, pid ' + str(d.get('pid')) if d['running'] else 'not running'}"
             + (f", serving on {d['server_url']}" if d["running"] and d.get("server_url") else "")]
    for name in ("current", "previous"):
        ref = doc.get(name)
        if isinstance(ref, dict) and "sha256" in ref:
            lines.append(f"{name:<10} {ref['model']} {ref['version']} {ref['target'].rsplit('/', 1)[-1]} "
                         f"[{ref['runtime']}/{ref['precision']}/{ref['device']}] {ref['sha256'][:12]}")
        elif ref is not None:
            lines.append(f"{name:<10} {ref}")
    u = doc["update"]
    lines.append(f"update     {u.get('state', u.get('error'))}"
                 + (f"  {u['deployment_id']}" if u.get("deployment_id") else "")
                 + (f"  ({u['reason']})" if u.get("reason") else ""))
    lines.append(f"outbox     {doc['outbox_pending']} message(s) waiting for the broker")
    if doc.get("server_ready") is not None:
        lines.append(f"server     {'ready' if doc['server_ready'] else 'not ready'}")
    return "\n".join(lines)


def _read_json(path: Path) -> Any:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_STATE_BYTES + 1)
        if len(data) > MAX_STATE_BYTES:
            return None
        return json.loads(data)
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/v2/health/ready", timeout=2.0) as response:
            return bool(response.status == 200)
    except (OSError, ValueError):
        return False
