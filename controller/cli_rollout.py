"""`edgefleet rollout`: create, watch and steer staged rollouts over the REST API.

    edgefleet rollout create ID --model M --version V --tag lab --waves 1,10%,50%,100% [--soak-s 600]
        [--device-policies '{"probation": {"window_s": 3600, "max_confidence_drop": 0.05}}']
    edgefleet rollout list | status ID [--watch]           read commands take --json
    edgefleet rollout pause | resume | abort | rollback ID [--reason TEXT]

`--waves` lists cumulative targets: a plain number is a device count, `N%` a share of the targeted
devices. User errors (unknown rollout, bad wave list, refused action) print one line and exit 2; the
controller's answer is never dumped as a traceback. `--device-policies` overrides what the rollout's
assignments are signed with; the controller checks it field by field and names a bad one.
"""

from __future__ import annotations

import json
import time
from typing import Annotated, Any

import typer
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from controller.api_client import ApiClient, ApiClientError, ClientConfig

app = typer.Typer(help="Staged rollouts: create, watch, pause, resume, abort, roll back.", no_args_is_help=True)
console = Console()
err = Console(stderr=True)

UrlOpt = Annotated[str | None, typer.Option("--url", help="Controller API URL.")]
TokenOpt = Annotated[str | None, typer.Option("--token", help="Operator API token.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the raw JSON answer.")]
ReasonOpt = Annotated[str | None, typer.Option("--reason", help="Why (kept in the audit trail).")]
TERMINAL = ("completed", "rolled_back", "aborted")


def _fail(message: str) -> typer.Exit:
    err.print(f"[red]error:[/red] {message}")
    return typer.Exit(2)


def _call(url: str | None, token: str | None, method: str, path: str, **kwargs: Any) -> Any:
    try:
        return ApiClient(ClientConfig.resolve(url, token)).request(method, path, **kwargs)
    except ApiClientError as e:
        raise _fail(e.message if e.status == 0 else f"{e.message} (HTTP {e.status})") from e


def parse_waves(text: str, soak_s: float) -> list[dict[str, Any]]:
    """'1,10%,50%,100%' → wave objects; cumulative targets must not shrink."""
    waves: list[dict[str, Any]] = []
    for part in (p.strip() for p in text.split(",")):
        try:
            if part.endswith("%"):
                percent = float(part[:-1])
                if not 0 < percent <= 100:
                    raise ValueError
                waves.append({"percent": percent, "soak_s": soak_s})
            else:
                count = int(part)
                if count < 1:
                    raise ValueError
                waves.append({"count": count, "soak_s": soak_s})
        except ValueError:
            raise _fail(f"--waves: {part!r} is neither a device count (>= 1) nor a percentage like 10%") from None
    if not waves:
        raise _fail("--waves needs at least one wave")
    return waves


def parse_device_policies(text: str) -> dict[str, Any]:
    """The --device-policies JSON object; its fields are the controller's to judge."""
    try:
        value = json.loads(text)
    except ValueError as e:
        raise _fail(f"--device-policies is not valid JSON: {e}") from None
    if not isinstance(value, dict):
        raise _fail("--device-policies must be a JSON object like {\"probation\": {\"window_s\": 3600}}")
    return value


@app.command("create")
def create(
    rollout_id: Annotated[str, typer.Argument(help="A name for the rollout, e.g. digits-2-lab.")],
    model: Annotated[str, typer.Option(help="Model name.")],
    version: Annotated[str, typer.Option(help="Release version to roll out.")],
    tag: Annotated[list[str] | None, typer.Option(help="Target devices with every one of these tags.")] = None,
    hardware_class: Annotated[list[str] | None, typer.Option(help="Limit to these hardware classes.")] = None,
    device: Annotated[list[str] | None, typer.Option(help="Also target these device ids.")] = None,
    waves: Annotated[str, typer.Option(help="Cumulative wave targets.")] = "1,10%,50%,100%",
    soak_s: Annotated[float, typer.Option(help="Healthy time each wave needs before the next.")] = 600.0,
    max_failure_ratio: Annotated[float, typer.Option(help="Failures a wave may have (share).")] = 0.0,
    auto_rollback: Annotated[bool, typer.Option(help="Roll a failed wave's devices back by itself.")] = False,
    rollback: Annotated[bool, typer.Option(
        "--rollback", help="A fleet rollback to a release these devices already ran (waives the accuracy-drop check)."
    )] = False,
    device_policies: Annotated[str | None, typer.Option(
        help='Device-policy overrides as JSON, e.g. \'{"probation": {"window_s": 3600}}\' (gate, probation, capture).'
    )] = None,
    url: UrlOpt = None, token: TokenOpt = None, as_json: JsonOpt = False,
) -> None:
    """Start a rollout of one release to the targeted devices."""
    if not (tag or hardware_class or device):
        raise _fail("say which devices: --tag, --hardware-class and/or --device")
    body: dict[str, Any] = {
        "id": rollout_id, "release": {"model": model, "version": version},
        "selector": {"tags": tag or [], "hardware_classes": hardware_class or [], "device_ids": device or []},
        "waves": parse_waves(waves, soak_s),
        "policy": {"max_failure_ratio": max_failure_ratio, "auto_rollback": auto_rollback},
        "rollback": rollback,
    }
    if device_policies is not None:
        body["device_policies"] = parse_device_policies(device_policies)
    answer = _call(url, token, "POST", "/api/v1/rollouts", json_body=body)
    if as_json:
        print(json.dumps(answer, indent=2))
        return
    console.print(f"rollout {answer['id']} created: {answer['devices']} devices in {answer['waves']} waves")


@app.command("list")
def list_(state: Annotated[str | None, typer.Option(help="Only rollouts in this state.")] = None,
          url: UrlOpt = None, token: TokenOpt = None, as_json: JsonOpt = False) -> None:
    """Rollouts, newest first."""
    answer = _call(url, token, "GET", "/api/v1/rollouts", query={"state": state})
    if as_json:
        print(json.dumps(answer, indent=2))
        return
    table = Table(title="rollouts")
    for column in ("id", "release", "state", "wave", "devices", "device states", "reason"):
        table.add_column(column, overflow="fold")
    for r in answer:
        table.add_row(r["id"], f"{r['release']['model']} {r['release']['version']}", r["state"],
                      f"{r['wave']}/{r['waves']}", str(r["devices"]),
                      ", ".join(f"{n} {s}" for s, n in r["device_states"].items()), r.get("reason") or "")
    console.print(table)


def render(r: dict[str, Any]) -> Group:
    """The status view: header, one row per wave with a progress bar, and failing devices' reasons."""
    head = Table.grid(padding=(0, 2))
    head.add_row(f"[bold]{r['id']}[/bold]", f"{r['release']['model']} {r['release']['version']}",
                 f"[bold]{r['state']}[/bold]", f"wave {r['wave']}/{r['waves']}", f"{r['devices']} devices")
    if r.get("reason"):
        head.add_row("", f"[red]{r['reason']}[/red]")
    waves = Table(show_header=True, box=None)
    for column in ("wave", "target", "size", "progress", "states"):
        waves.add_column(column)
    for w in r.get("waves_detail", []):
        done = sum(w["device_states"].get(s, 0) for s in ("succeeded", "failed", "timed_out", "reverted"))
        width = 20
        filled = round(width * done / w["size"]) if w["size"] else 0
        bar = "[green]" + "█" * filled + "[/green]" + "░" * (width - filled)
        target = f"{w['count']} devices" if w.get("count") else f"{w['percent']:g} %"
        marker = "▶ " if w["number"] == r["wave"] and r["state"] not in TERMINAL else "  "
        waves.add_row(f"{marker}{w['number']}", target, str(w["size"]), f"{bar} {done}/{w['size']}",
                      ", ".join(f"{n} {s}" for s, n in w["device_states"].items()))
    failing = Table(show_header=True, box=None, title="devices with a failure")
    failing.add_column("device")
    failing.add_column("state")
    failing.add_column("reason", overflow="fold")
    rows = [d for d in r.get("device_progress", []) if d.get("state") in ("failed", "timed_out")]
    for d in rows:
        failing.add_row(d.get("device_id", ""), d.get("state", ""), d.get("reason") or "")
    return Group(head, waves, *([failing] if rows else []))


@app.command("status")
def status(rollout_id: str, watch: Annotated[bool, typer.Option(help="Refresh until the rollout ends.")] = False,
           interval_s: Annotated[float, typer.Option(help="Refresh period with --watch.")] = 2.0,
           url: UrlOpt = None, token: TokenOpt = None, as_json: JsonOpt = False) -> None:
    """One rollout: waves, per-device progress, reasons; --watch follows it live."""
    answer = _call(url, token, "GET", f"/api/v1/rollouts/{rollout_id}")
    if as_json:
        print(json.dumps(answer, indent=2))
        return
    if not watch:
        console.print(render(answer))
        return
    with Live(render(answer), console=console, refresh_per_second=4) as live:
        while answer["state"] not in TERMINAL and answer["state"] != "halted":
            time.sleep(interval_s)
            answer = _call(url, token, "GET", f"/api/v1/rollouts/{rollout_id}")
            live.update(render(answer))


def _action(name: str) -> Any:
    def command(rollout_id: str, reason: ReasonOpt = None, url: UrlOpt = None, token: TokenOpt = None,
                as_json: JsonOpt = False) -> None:
        answer = _call(url, token, "POST", f"/api/v1/rollouts/{rollout_id}/{name}",
                       json_body={"reason": reason} if reason else {})
        if as_json:
            print(json.dumps(answer, indent=2))
            return
        console.print(f"rollout {answer['id']}: {answer['state']}")

    command.__doc__ = {"pause": "Stop advancing; devices keep what they run.",
                       "resume": "Carry on after a pause or a halt.",
                       "abort": "End the rollout; devices keep what they run.",
                       "rollback": "Send every touched device back to its previous release."}[name]
    return command


for _name in ("pause", "resume", "abort", "rollback"):
    app.command(_name)(_action(_name))
