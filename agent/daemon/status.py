"""`edgefleet-agent status --config DEVICE.toml`: what this device runs and where its update stands.

Reads only the device's state folder (pointers, journal, outbox, trust state, the running daemon's
`daemon.json`, the sample-capture counters it saves in `capture-counts.json`, the capture spool) and,
when the daemon serves, asks its `/v2/health/ready`. It works with the daemon
stopped, which is when an operator most needs it. Exit status: 0 when the daemon runs, 3 when it
does not (as `systemctl status`), 2 for a configuration problem.

`--alive` is the container health check: it reads only `daemon.json` and `/proc`, so it answers fast
and does not depend on a model being served (the inference server opens only with the first model).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from agent.daemon.config import DaemonConfig

MAX_STATE_BYTES = 8 * 1024 * 1024


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, default=None, help="device config file (.toml or .json)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--alive", action="store_true",
                        help="only check that the daemon runs and is not stuck (exit 0, else 3): a health check")


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
    doc["capture"] = capture_status(config, running=doc["daemon"]["running"])
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
    if getattr(args, "alive", False):
        ok, why = liveness(config)
        print(why)
        return 0 if ok else 3
    doc = collect(config)
    if args.json:
        print(json.dumps(doc, sort_keys=True, default=str))
    else:
        print(render(doc))
    return 0 if doc["daemon"]["running"] else 3


def liveness(config: DaemonConfig, *, now_s: float | None = None) -> tuple[bool, str]:
    """Whether the daemon runs and is not stuck, and why not.

    Dead: no `daemon.json`, state `stopped`, its pid gone or a zombie. Stuck: the process is stopped
    (SIGSTOP, a debugger), or `daemon.json` promises a refresh every `heartbeat_s` seconds and is
    older than three of them."""
    runtime = _read_json(config.runtime_path)
    if not isinstance(runtime, dict):
        return False, f"no readable daemon state in {config.runtime_path}"
    pid, state = runtime.get("pid"), runtime.get("state")
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False, f"{config.runtime_path} names no pid"
    if state == "stopped" or not _alive(pid):
        return False, f"daemon (pid {pid}) is not running"
    proc_state = _proc_state(pid)
    if proc_state in ("T", "t", "Z", "X"):
        return False, f"daemon (pid {pid}) is {'stopped' if proc_state in ('T', 't') else 'dead'} ({proc_state})"
    heartbeat_s, updated_at = runtime.get("heartbeat_s"), runtime.get("updated_at")
    if isinstance(heartbeat_s, (int, float)) and heartbeat_s > 0 and isinstance(updated_at, (int, float)):
        age_s = (time.time() if now_s is None else now_s) - updated_at
        if age_s > 3 * heartbeat_s:
            return False, f"daemon (pid {pid}) has not refreshed {config.runtime_path.name} for {age_s:.0f} s"
    return True, f"daemon running, pid {pid}, {state}"


def _proc_state(pid: int) -> str | None:
    """The state letter in /proc/PID/stat (None where there is no /proc)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text(errors="replace")
    except OSError:
        return None
    _, _, rest = text.rpartition(")")
    fields = rest.split()
    return fields[0] if fields else None


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
    lines.append(render_capture(doc.get("capture")))
    if doc.get("server_ready") is not None:
        lines.append(f"server     {'ready' if doc['server_ready'] else 'not ready'}")
    return "\n".join(lines)


def capture_status(config: DaemonConfig, running: bool) -> dict[str, Any]:
    """The counters the daemon last saved (cumulative since it started) and what waits in the spool now.

    The spool is counted from its folder, so the figure is right with the daemon stopped; the counters
    are the running daemon's (saved every few seconds) or, with it stopped, those of its last run."""
    from agent.telemetry.capture_counts import CaptureCountsError, counts_from_dict

    doc: dict[str, Any] = {"counters": None}
    raw = _read_json(config.state_dir / "capture-counts.json")
    if raw is not None:
        try:
            counts = counts_from_dict(raw, "capture-counts.json")
        except CaptureCountsError as e:
            doc["counters"] = {"error": str(e)}
        else:
            doc["counters"] = counts.counters()
            doc["counters"].pop("pending")
            doc["counters"].pop("pending_bytes")
            doc["since_s"] = counts.since_s
            doc["from"] = "running daemon" if running else "last run"
    pending, pending_bytes = 0, 0
    try:
        for meta in config.capture_dir.glob("*.json"):
            sample = meta.with_suffix(".npz")
            if sample.is_file():
                pending += 1
                pending_bytes += sample.stat().st_size
    except OSError:
        pass  # an unreadable spool folder counts as empty here; the daemon logs why
    doc["pending"], doc["pending_bytes"] = pending, pending_bytes
    return doc


def render_capture(capture: Any) -> str:
    if not isinstance(capture, dict):
        return "capture    -"
    waiting = f"{capture.get('pending', 0)} sample(s), {capture.get('pending_bytes', 0)} bytes waiting for upload"
    c = capture.get("counters")
    if not isinstance(c, dict):
        return f"capture    {waiting}"
    if "error" in c:
        return f"capture    {waiting}; counters unreadable: {c['error']}"
    captured = c["captured_random"] + c["captured_low_confidence"] + c["captured_disagreement"]
    dropped = (c["dropped_hourly_budget"] + c["dropped_daily_budget"] + c["dropped_spool_full"]
               + c["dropped_backlog"])
    return "\n".join([
        f"capture    {waiting}",
        f"           {captured} captured (random {c['captured_random']}, low_confidence "
        f"{c['captured_low_confidence']}, disagreement {c['captured_disagreement']}), {c['spooled_bytes']} bytes "
        f"spooled; {c['uploaded']} uploaded, {c['upload_failures']} failed upload(s), "
        f"{c['upload_rounds_failed']} failed round(s)",
        f"           {dropped} dropped (hourly budget {c['dropped_hourly_budget']}, daily budget "
        f"{c['dropped_daily_budget']}, spool full {c['dropped_spool_full']}, backlog {c['dropped_backlog']}), "
        f"{c['write_errors']} write error(s), {c['discarded_by_policy']} deleted by the off switch "
        f"({capture.get('from')}, since {_when(capture.get('since_s'))})",
    ])


def _when(since_s: Any) -> str:
    if not isinstance(since_s, (int, float)):
        return "?"
    from datetime import datetime, timezone

    return datetime.fromtimestamp(since_s, timezone.utc).isoformat(timespec="seconds")


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
