"""`edgefleet enrollment-tokens`, `devices` and `models`: the registry, over the controller API."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from controller import cli_fleet
from controller.cli_base import JsonOpt, TokenOpt, UrlOpt, _call, _client, _table, console, err

enrollment_app = typer.Typer(help="One-time device enrollment tokens.", no_args_is_help=True)
devices_app = typer.Typer(help="The device registry.", no_args_is_help=True)
models_app = typer.Typer(help="Model releases and their variant builds.", no_args_is_help=True)


@enrollment_app.command("create")
def enrollment_create(
    tag: Annotated[list[str] | None, typer.Option(help="Tag given to the device (repeatable).")] = None,
    hardware_class: Annotated[str | None, typer.Option(help="Only devices of this class may use it.")] = None,
    ttl_s: Annotated[float | None, typer.Option(help="Lifetime in seconds.")] = None,
    note: str = "",
    url: UrlOpt = None,
    token: TokenOpt = None,
) -> None:
    """Create a one-time enrollment token; the secret is printed once, on stdout alone."""
    body = {"tags": tag or [], "hardware_class": hardware_class, "ttl_s": ttl_s, "note": note}
    answer = _call(_client(url, token), "POST", "/api/v1/enrollment-tokens", json_body=body)
    err.print(f"enrollment token {answer['id']} expires {answer['expires_at']}; shown only now:")
    print(answer["token"])


@enrollment_app.command("list")
def enrollment_list(url: UrlOpt = None, token: TokenOpt = None, as_json: JsonOpt = False) -> None:
    page = _call(_client(url, token), "GET", "/api/v1/enrollment-tokens", query={"limit": 500})
    if as_json:
        print(json.dumps(page, indent=2))
    else:
        _table(
            "enrollment tokens",
            page["items"],
            ["id", "prefix", "hardware_class", "tags", "expires_at", "used_by_device", "revoked_at"],
        )


@devices_app.command("list")
def devices_list(
    tag: Annotated[list[str] | None, typer.Option(help="Repeatable; all must match.")] = None,
    hardware_class: str | None = None,
    model: str | None = None,
    version: str | None = None,
    status: str | None = None,
    online: Annotated[bool | None, typer.Option("--online/--offline")] = None,
    limit: int = 100,
    offset: int = 0,
    url: UrlOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List devices, filtered by tag, class, running model/version, status or presence."""
    query = {
        "tag": tag,
        "hardware_class": hardware_class,
        "model": model,
        "version": version,
        "status": status,
        "online": online,
        "limit": limit,
        "offset": offset,
    }
    page = _call(_client(url, token), "GET", "/api/v1/devices", query=query)
    if as_json:
        print(json.dumps(page, indent=2))
        return
    _table(
        f"devices ({page['total']} total)",
        page["items"],
        [
            "id",
            "status",
            "hardware_class",
            "tags",
            "online",
            "current_model",
            "current_version",
            "current_variant",
            "update_state",
            "last_seen_at",
        ],
    )


@devices_app.command("show")
def devices_show(device_id: str, url: UrlOpt = None, token: TokenOpt = None, as_json: JsonOpt = False) -> None:
    """One device: its state, latency p50/p95/p99 per version, its newest gate report."""
    cli_fleet.show_device(_client(url, token), device_id, as_json)


@devices_app.command("revoke")
def devices_revoke(
    device_id: str, reason: Annotated[str, typer.Option()], url: UrlOpt = None, token: TokenOpt = None
) -> None:
    """Revoke a device: its MQTT credential stops working and its certificate goes on the CRL."""
    answer = _call(
        _client(url, token), "POST", f"/api/v1/devices/{device_id}/revoke", json_body={"reason": reason}
    )
    console.print(f"device {answer['id']} is {answer['status']}")


@models_app.command("upload")
def models_upload(
    model_path: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="The ONNX model.")],
    golden: Annotated[Path, typer.Option(exists=True, dir_okay=False, help="Golden set (.npz).")],
    name: Annotated[str, typer.Option()],
    version: Annotated[str, typer.Option()],
    task: str = "classification",
    preprocessing: str = "",
    min_accuracy: float | None = None,
    wait: Annotated[bool, typer.Option(help="Follow the build until it ends.")] = False,
    timeout_s: float = 1800.0,
    url: UrlOpt = None,
    token: TokenOpt = None,
) -> None:
    """Register a release; the controller builds, measures and signs its variants in the background."""
    client = _client(url, token)
    form = {"name": name, "version": version, "task": task, "preprocessing": preprocessing}
    if min_accuracy is not None:
        form["min_accuracy"] = str(min_accuracy)
    files = {
        "model": (model_path.name, model_path.read_bytes()),
        "golden": (golden.name, golden.read_bytes()),
    }
    release = _call(client, "POST", "/api/v1/models", form=form, files=files)
    console.print(
        f"registered {name} {version} (release counter {release['release_counter']}): {release['status']}"
    )
    if not wait:
        return
    deadline = time.monotonic() + timeout_s
    last = ""
    while release["status"] not in ("published", "failed"):
        if time.monotonic() > deadline:
            err.print(f"[yellow]still {release['status']} after {timeout_s} s[/yellow]")
            raise typer.Exit(3)
        time.sleep(1.0)
        release = _call(client, "GET", f"/api/v1/models/{name}/{version}")
        line = f"{release['progress'] * 100:5.1f} %  {release['progress_message']}"
        if line != last:
            console.print(line)
            last = line
    _print_release(release)
    if release["status"] == "failed":
        raise typer.Exit(1)


def _print_release(release: dict[str, Any]) -> None:
    console.print(
        f"{release['name']} {release['version']}: {release['status']}"
        + (f" — {release['error']}" if release.get("error") else "")
    )
    if release.get("variants"):
        _table(
            "variants",
            release["variants"],
            ["variant_id", "status", "offered", "accuracy", "agreement", "latency_ms", "length", "note"],
        )


@models_app.command("list")
def models_list(
    name: str | None = None, url: UrlOpt = None, token: TokenOpt = None, as_json: JsonOpt = False
) -> None:
    page = _call(_client(url, token), "GET", "/api/v1/models", query={"name": name, "limit": 500})
    if as_json:
        print(json.dumps(page, indent=2))
    else:
        _table(
            f"model releases ({page['total']} total)",
            page["items"],
            ["name", "version", "status", "progress", "release_counter", "created_by", "created_at"],
        )


@models_app.command("show")
def models_show(
    name: str, version: str, url: UrlOpt = None, token: TokenOpt = None, as_json: JsonOpt = False
) -> None:
    release = _call(_client(url, token), "GET", f"/api/v1/models/{name}/{version}")
    if as_json:
        print(json.dumps(release, indent=2))
    else:
        _print_release(release)
