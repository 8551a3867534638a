"""`edgefleet model push | list | show | block`: releases with progress bars for the upload and the build.

`push` streams the multipart body through a counting reader, so the upload bar moves with the bytes the
controller actually received; the build bar follows the release's `progress` until it is published,
awaits the offline release key, or fails (exit 1, with the controller's reason on one line).
`block` signs a release floor (admin token): it cannot be undone, so it asks first unless `--yes`.
"""

from __future__ import annotations

import io
import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from controller.api_client import ApiClient, ApiClientError, ClientConfig, _multipart

app = typer.Typer(help="Model releases: push (with build progress), list, show, block.", no_args_is_help=True)
console = Console()
err = Console(stderr=True)

UrlOpt = Annotated[str | None, typer.Option("--url", help="Controller API URL.")]
TokenOpt = Annotated[str | None, typer.Option("--token", help="Operator API token.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the raw JSON answer.")]
DONE = ("published", "failed", "awaiting_signature")


def _fail(message: str, code: int = 2) -> typer.Exit:
    err.print(f"[red]error:[/red] {message}")
    return typer.Exit(code)


def _client(url: str | None, token: str | None) -> ApiClient:
    try:
        return ApiClient(ClientConfig.resolve(url, token))
    except ApiClientError as e:
        raise _fail(e.message) from e


def _call(client: ApiClient, method: str, path: str, **kwargs: Any) -> Any:
    try:
        return client.request(method, path, **kwargs)
    except ApiClientError as e:
        raise _fail(e.message if e.status == 0 else f"{e.message} (HTTP {e.status})") from e


class _CountingReader(io.RawIOBase):
    def __init__(self, data: bytes, advance: Any) -> None:
        self._data = memoryview(data)
        self._pos = 0
        self._advance = advance

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        end = len(self._data) if size is None or size < 0 else min(len(self._data), self._pos + size)
        chunk = bytes(self._data[self._pos:end])
        self._pos = end
        self._advance(len(chunk))
        return chunk


def _upload(client: ApiClient, form: dict[str, str], files: dict[str, tuple[str, bytes]], progress: Progress
            ) -> dict[str, Any]:
    body, content_type = _multipart(form, files)
    task = progress.add_task("upload", total=len(body))
    reader = _CountingReader(body, lambda n: progress.advance(task, n))
    headers = {"Content-Type": content_type, "Content-Length": str(len(body)), "Accept": "application/json"}
    if client.config.token:
        headers["Authorization"] = f"Bearer {client.config.token}"
    request = urllib.request.Request(client.config.url + "/api/v1/models", data=reader, method="POST",
                                     headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=client.timeout_s) as response:
            answer: dict[str, Any] = json.loads(response.read())
            return answer
    except urllib.error.HTTPError as e:
        try:
            message = json.loads(e.read())["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = f"HTTP {e.code}"
        raise _fail(f"upload refused: {message}") from e
    except urllib.error.URLError as e:
        raise _fail(f"cannot reach the controller at {client.config.url}: {e.reason}") from e


@app.command("push")
def push(
    model_path: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="The ONNX model.")],
    golden: Annotated[Path, typer.Option(exists=True, dir_okay=False, help="Golden set (.npz).")],
    name: Annotated[str, typer.Option(help="Model name.")],
    version: Annotated[str, typer.Option(help="Release version.")],
    min_accuracy: Annotated[float | None, typer.Option(help="Accuracy floor for its variants.")] = None,
    wait: Annotated[bool, typer.Option(help="Follow the build until it ends.")] = True,
    timeout_s: Annotated[float, typer.Option(help="Longest wait for the build.")] = 1800.0,
    url: UrlOpt = None, token: TokenOpt = None, as_json: JsonOpt = False,
) -> None:
    """Upload a model and its golden set; the controller builds, measures and signs the variants."""
    client = _client(url, token)
    form = {"name": name, "version": version}
    if min_accuracy is not None:
        form["min_accuracy"] = str(min_accuracy)
    files = {"model": (model_path.name, model_path.read_bytes()), "golden": (golden.name, golden.read_bytes())}
    columns = (TextColumn("{task.description:>7}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
               TimeElapsedColumn())
    with Progress(*columns, console=err, disable=as_json) as progress:
        release = _upload(client, form, files, progress)
    if wait:
        with Progress(TextColumn("{task.description:>7}"), BarColumn(), TextColumn("{task.percentage:>3.0f} %"),
                      TextColumn("{task.fields[message]}"), TimeElapsedColumn(), console=err,
                      disable=as_json) as progress:
            task = progress.add_task("build", total=1.0, message="")
            deadline = time.monotonic() + timeout_s
            while release["status"] not in DONE:
                if time.monotonic() > deadline:
                    raise _fail(f"{name} {version} still {release['status']} after {timeout_s:g} s", code=3)
                time.sleep(0.5)
                release = _call(client, "GET", f"/api/v1/models/{name}/{version}")
                progress.update(task, completed=float(release.get("progress") or 0.0),
                                message=str(release.get("progress_message") or "")[:60])
    if as_json:
        print(json.dumps(release, indent=2))
    else:
        _print(release)
    if release["status"] == "failed":
        raise typer.Exit(1)


def _print(release: dict[str, Any]) -> None:
    line = f"{release['name']} {release['version']}: [bold]{release['status']}[/bold]"
    if release.get("error"):
        line += f" — {release['error']}"
    console.print(line)
    variants = release.get("variants") or []
    if variants:
        table = Table(title="variants")
        for column in ("variant", "status", "offered", "accuracy", "agreement", "build-host ms", "bytes", "note"):
            table.add_column(column, overflow="fold")
        for v in variants:
            table.add_row(str(v.get("variant_id")), str(v.get("status")), str(v.get("offered")),
                          f"{v['accuracy']:.4f}" if v.get("accuracy") is not None else "—",
                          f"{v['agreement']:.4f}" if v.get("agreement") is not None else "—",
                          f"{v['latency_ms']:.3f}" if v.get("latency_ms") is not None else "—",
                          str(v.get("length", "")), str(v.get("note") or ""))
        console.print(table)


@app.command("list")
def list_(name: Annotated[str | None, typer.Option(help="Only this model.")] = None,
          url: UrlOpt = None, token: TokenOpt = None, as_json: JsonOpt = False) -> None:
    """Releases, newest first."""
    page = _call(_client(url, token), "GET", "/api/v1/models", query={"name": name, "limit": 500})
    if as_json:
        print(json.dumps(page, indent=2))
        return
    table = Table(title=f"model releases ({page['total']} total)")
    for column in ("name", "version", "status", "progress", "release counter", "created by", "created at"):
        table.add_column(column)
    for r in page["items"]:
        table.add_row(r["name"], r["version"], r["status"], f"{(r.get('progress') or 0) * 100:.0f} %",
                      str(r.get("release_counter")), str(r.get("created_by")), str(r.get("created_at")))
    console.print(table)


@app.command("show")
def show(name: str, version: str, url: UrlOpt = None, token: TokenOpt = None, as_json: JsonOpt = False) -> None:
    """One release with its variants and their build-time figures."""
    release = _call(_client(url, token), "GET", f"/api/v1/models/{name}/{version}")
    if as_json:
        print(json.dumps(release, indent=2))
    else:
        _print(release)


@app.command("block")
def block(
    name: Annotated[str, typer.Argument(help="Model name.")],
    below: Annotated[int, typer.Option("--below", min=1, help="Block every release with a lower release counter.")],
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
    url: UrlOpt = None,
    token: Annotated[str | None, typer.Option("--token", help="Admin API token.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Block known-bad releases on every device: sign a release floor (never lowered; needs an admin token)."""
    client = _client(url, token)
    if not yes and not typer.confirm(
            f"Every device will refuse releases of {name} with a release counter below {below}, for good "
            "(floors are never lowered). Continue?", err=True):
        raise _fail("nothing changed", code=1)
    change = _call(client, "PUT", f"/api/v1/models/{name}/release-floor", json_body={"below": below})
    if as_json:
        print(json.dumps(change, indent=2))
        return
    if change["targets_version"] is None:
        console.print(f"{name}: the release floor already is {change['release_floor']}; nothing signed")
    else:
        console.print(f"{name}: release floor {change['previous_floor']} → [bold]{change['release_floor']}[/bold], "
                      f"signed in targets version {change['targets_version']}")
    console.print(f"blocked versions: {', '.join(change['blocked_versions']) or 'none'}")
    if change["devices_on_blocked"]:
        console.print(f"[yellow]still running a blocked release[/yellow] (roll them forward): "
                      f"{', '.join(change['devices_on_blocked'])}")
