"""`edgefleet devices show` (device, latency table, gate report), `edgefleet simulate`, `edgefleet demo`.

`simulate --devices N` enrolls N real `edgefleet-agent` processes against a running controller (fake
Jetson / Raspberry Pi 5 / Intel boards from the source tree's `demo/probe_roots`) and keeps them running
until Ctrl-C: a small fleet of real agents for load tests and for trying rollouts by hand. `demo` runs
the scripted end-to-end scenario (`python -m demo`). Both need the source tree (the `demo` package).
"""

from __future__ import annotations

import contextlib
import json
import signal
import threading
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from controller.api_client import ApiClient, ApiClientError, ClientConfig

console = Console()
err = Console(stderr=True)
UrlOpt = Annotated[str | None, typer.Option("--url", help="Controller API URL.")]
TokenOpt = Annotated[str | None, typer.Option("--token", help="Operator (admin for simulate) API token.")]
GATE_KINDS = ("gate_passed", "gate_failed")


def _fail(message: str, code: int = 2) -> typer.Exit:
    err.print(f"[red]error:[/red] {message}")
    return typer.Exit(code)


def _call(client: ApiClient, method: str, path: str, **kwargs: Any) -> Any:
    try:
        return client.request(method, path, **kwargs)
    except ApiClientError as e:
        raise _fail(e.message if e.status == 0 else f"{e.message} (HTTP {e.status})") from e


def _fmt(value: Any) -> str:
    return "—" if value is None else (f"{value:.3f}" if isinstance(value, float) else str(value))


def show_device(client: ApiClient, device_id: str, as_json: bool = False, window_s: int = 3600) -> None:
    """The device, its latency p50/p95/p99 per version (merged histograms), its newest gate report."""
    device = _call(client, "GET", f"/api/v1/devices/{device_id}")
    try:
        latency = client.request("GET", f"/api/v1/telemetry/devices/{device_id}/latency",
                                 query={"window_s": window_s, "step_s": max(60, window_s // 60)})
    except ApiClientError:
        latency = None  # a controller without telemetry still shows the device
    history = _call(client, "GET", f"/api/v1/devices/{device_id}/history", query={"limit": 200})
    events = history.get("items", history) if isinstance(history, dict) else history
    gate = next((e for e in events if e.get("kind") in GATE_KINDS), None)
    if as_json:
        print(json.dumps({"device": device, "latency": latency, "last_gate": gate}, indent=2))
        return
    head = Table.grid(padding=(0, 2))
    for key in ("id", "hardware_class", "status", "online", "current_model", "current_version", "current_variant",
                "update_state", "last_error", "last_seen_at"):
        if key in device:
            head.add_row(key.replace("_", " "), _fmt(device.get(key)))
    console.print(head)
    table = Table(title=f"latency, last {window_s // 60} min (merged histograms)")
    for column in ("version", "requests", "errors", "p50 ms", "p95 ms", "p99 ms"):
        table.add_column(column)
    for version, f in ((latency or {}).get("by_version") or {}).items():
        table.add_row(version, _fmt(f.get("requests")), _fmt(f.get("errors")), _fmt(f.get("p50_ms")),
                      _fmt(f.get("p95_ms")), _fmt(f.get("p99_ms")))
    console.print(table if table.row_count else "[dim]no telemetry in this window[/dim]")
    if gate:
        d = (gate.get("detail") or {}).get("details") or {}
        report = Table(title=f"last gate report: {gate['kind']} ({(gate.get('detail') or {}).get('version')})")
        report.add_column("figure")
        report.add_column("value", overflow="fold")
        for key in ("candidate", "runtime", "precision", "accuracy", "agreement", "latency_p50_ms", "latency_p95_ms",
                    "latency_p99_ms", "peak_rss_mb", "latency_regression_ratio", "reasons"):
            if d.get(key) not in (None, ""):
                report.add_row(key, _fmt(d.get(key)))
        console.print(report)


def simulate(
    devices: Annotated[int, typer.Option("--devices", min=1, max=200, help="How many agents to run.")] = 6,
    tag: Annotated[list[str] | None, typer.Option(help="Tags for the simulated devices.")] = None,
    work_dir: Annotated[Path, typer.Option(help="State folders of the agents.")] = Path("simulated-fleet"),
    prefix: Annotated[str, typer.Option(help="Device id prefix.")] = "sim",
    url: UrlOpt = None, token: TokenOpt = None,
) -> None:
    """Enroll and run N real agents on fake boards against a running controller, until Ctrl-C."""
    try:
        from demo.devices import DemoDevice
        from demo.scenario import BOARDS
    except ImportError:
        raise _fail("simulate needs the source tree (the demo package): run it from the repository") from None
    config = ClientConfig.resolve(url, token)
    client = ApiClient(config)
    fleet: list[Any] = []
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        for index in range(devices):
            board, kind = BOARDS[index % len(BOARDS)]
            answer = _call(client, "POST", "/api/v1/enrollment-tokens", json_body={"tags": tag or ["simulated"],
                                                                                  "ttl_s": 600})
            device = DemoDevice(f"{prefix}-{kind}-{index + 1}", board, tag or ["simulated"], work_dir)
            device.enroll(config.url, answer["token"])
            device.configure(config.url)
            device.start()
            fleet.append(device)
            console.print(f"{device.device_id}: {board}, serving on 127.0.0.1:{device.server_port}")
        console.print(f"{len(fleet)} agents running; Ctrl-C stops them")
        with contextlib.suppress(KeyboardInterrupt):
            stop.wait()
    except RuntimeError as e:
        raise _fail(str(e)) from e
    finally:
        for device in fleet:
            device.stop()


def demo(
    devices: Annotated[int, typer.Option(help="Simulated devices (at least 3).")] = 6,
    state_dir: Annotated[Path, typer.Option(help="Working folder, emptied at start.")] = Path("demo-state"),
    keep_running: Annotated[bool, typer.Option(help="Leave everything up for the dashboard.")] = False,
) -> None:
    """Run the end-to-end demo: broker, controller, agents, three releases, waves, a halt, a rollback."""
    try:
        from demo.__main__ import run
    except ImportError:
        raise _fail("the demo ships with the source tree: run `make demo` from the repository") from None
    raise typer.Exit(run(devices, state_dir, keep_running))


def register(app: typer.Typer) -> None:
    """Mount `simulate` and `demo` on the top-level CLI."""
    app.command("simulate")(simulate)
    app.command("demo")(demo)
