"""`edgefleet`: the operator command line.

    edgefleet controller serve | migrate          run on the controller host (reads controller settings)
    edgefleet tokens create | list | revoke       operator tokens, straight in the controller database
                                                  (how the first admin token comes to exist)
    edgefleet enrollment-tokens create | list     over the API
    edgefleet devices list | show | revoke        over the API
    edgefleet models upload | list | show         over the API
    edgefleet repository init | pending | sign | import   image repository; offline release-key workflow
    edgefleet broker files                         Mosquitto password + ACL files for the enrolled fleet
    edgefleet keys ...                            trust-chain keys (controller.keys_cli)

API commands read the URL and token from --url/--token, EDGEFLEET_URL/EDGEFLEET_TOKEN, or the CLI
config file (see `controller.api_client`). Lists print a table; `--json` prints the raw answer.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from controller import cli_fleet, cli_model, cli_rollout
from controller.api_client import ApiClient, ApiClientError, ClientConfig
from controller.keys_cli import app as keys_app
from controller.samples_cli import app as samples_app

app = typer.Typer(help="edgefleet operator CLI", no_args_is_help=True)
app.add_typer(keys_app, name="keys", help="Create and rotate the trust-chain signing keys.")
app.add_typer(samples_app, name="samples", help="Samples captured on devices: list, export a dataset.")
controller_app = typer.Typer(help="Run the controller (on the controller host).", no_args_is_help=True)
tokens_app = typer.Typer(
    help="Operator API tokens (on the controller host: writes the database).", no_args_is_help=True
)
enrollment_app = typer.Typer(help="One-time device enrollment tokens.", no_args_is_help=True)
devices_app = typer.Typer(help="The device registry.", no_args_is_help=True)
models_app = typer.Typer(help="Model releases and their variant builds.", no_args_is_help=True)
repository_app = typer.Typer(
    help="The image repository and the offline release-key workflow.", no_args_is_help=True
)
app.add_typer(controller_app, name="controller")
app.add_typer(tokens_app, name="tokens")
app.add_typer(enrollment_app, name="enrollment-tokens")
app.add_typer(devices_app, name="devices")
app.add_typer(models_app, name="models")
app.add_typer(repository_app, name="repository")
broker_app = typer.Typer(help="Files for the MQTT broker.", no_args_is_help=True)
app.add_typer(broker_app, name="broker")
app.add_typer(cli_rollout.app, name="rollout")
app.add_typer(cli_model.app, name="model")
cli_fleet.register(app)

console = Console()
err = Console(stderr=True)

ConfigOpt = Annotated[Path | None, typer.Option("--config", help="Controller settings file (TOML).")]
UrlOpt = Annotated[str | None, typer.Option("--url", help="Controller API URL.")]
TokenOpt = Annotated[str | None, typer.Option("--token", help="Operator API token.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the raw JSON answer.")]


def _settings(config: Path | None) -> Any:
    from controller.settings import Settings

    try:
        return Settings.load(config)
    except (FileNotFoundError, ValueError) as e:
        err.print(f"[red]error:[/red] {e}")
        raise typer.Exit(2) from e


def _client(url: str | None, token: str | None) -> ApiClient:
    try:
        return ApiClient(ClientConfig.resolve(url, token))
    except ApiClientError as e:
        err.print(f"[red]error:[/red] {e.message}")
        raise typer.Exit(2) from e


def _call(client: ApiClient, method: str, path: str, **kwargs: Any) -> Any:
    try:
        return client.request(method, path, **kwargs)
    except ApiClientError as e:
        err.print(f"[red]error:[/red] {e}")
        raise typer.Exit(1) from e


def _table(title: str, rows: list[dict[str, Any]], columns: list[str]) -> None:
    table = Table(title=title)
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*("" if row.get(c) is None else str(row.get(c)) for c in columns))
    console.print(table)


# --- controller host -------------------------------------------------------------------------------


@controller_app.command("serve")
def serve(
    config: ConfigOpt = None,
    host: Annotated[str | None, typer.Option()] = None,
    port: Annotated[int | None, typer.Option()] = None,
    embedded_broker: Annotated[
        bool, typer.Option(help="Also run an MQTT broker (amqtt) on mqtt_port, for a lab without Mosquitto.")
    ] = False,
) -> None:
    """Run the controller API with uvicorn (migrations run at start-up unless disabled)."""
    import uvicorn

    from controller.app import create_app

    settings = _settings(config)
    if embedded_broker:
        from controller.broker import app_with_embedded_broker

        application, broker = app_with_embedded_broker(settings, create_app, bind_host=settings.host)
        broker.start()
        try:
            uvicorn.run(application, host=host or settings.host, port=port or settings.port, log_level="info")
        finally:
            broker.stop()
        return
    uvicorn.run(
        create_app(settings), host=host or settings.host, port=port or settings.port, log_level="info"
    )


@controller_app.command("migrate")
def migrate(config: ConfigOpt = None) -> None:
    """Bring the controller database to the newest schema."""
    from controller.db import make_engine
    from controller.db import migrate as db_migrate

    settings = _settings(config)
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.resolved_database_url)
    before = db_migrate.current_revision(engine)
    db_migrate.upgrade(engine)
    after = db_migrate.current_revision(engine)
    console.print(f"database schema: {before or 'empty'} → {after}")


def _db_session(config: Path | None) -> Any:
    from controller.db import make_engine, make_session_factory
    from controller.db import migrate as db_migrate

    settings = _settings(config)
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.resolved_database_url)
    db_migrate.upgrade(engine)
    return make_session_factory(engine)()


@tokens_app.command("create")
def tokens_create(
    role: Annotated[str, typer.Option(help="viewer | operator | admin")],
    name: Annotated[str, typer.Option(help="Who or what uses the token.")] = "admin",
    expires_in_s: Annotated[float | None, typer.Option(help="Lifetime; default: no expiry.")] = None,
    config: ConfigOpt = None,
) -> None:
    """Create an operator token; the secret is printed once, on stdout alone."""
    from controller.auth import create_api_token
    from controller.errors import ControllerError

    with _db_session(config) as session:
        try:
            row, secret = create_api_token(session, name=name, role=role, expires_in_s=expires_in_s)
        except ControllerError as e:
            err.print(f"[red]error:[/red] {e.message}")
            raise typer.Exit(2) from e
        session.commit()
        err.print(f"created token {row.id} ({row.role}) named {row.name!r}; it is shown only now:")
    print(secret)


@tokens_app.command("list")
def tokens_list(config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """List operator tokens (never their secrets)."""
    from sqlalchemy import select

    from controller.db.models import ApiToken

    with _db_session(config) as session:
        rows = [
            {
                "id": t.id,
                "name": t.name,
                "role": t.role,
                "prefix": t.prefix,
                "created_at": t.created_at.isoformat(),
                "revoked_at": t.revoked_at and t.revoked_at.isoformat(),
            }
            for t in session.scalars(select(ApiToken).order_by(ApiToken.id))
        ]
    if as_json:
        print(json.dumps(rows, indent=2))
    else:
        _table("operator tokens", rows, ["id", "name", "role", "prefix", "created_at", "revoked_at"])


@tokens_app.command("revoke")
def tokens_revoke(token_id: int, config: ConfigOpt = None) -> None:
    """Revoke an operator token at once."""
    from controller.auth import revoke_api_token
    from controller.errors import ControllerError

    with _db_session(config) as session:
        try:
            revoke_api_token(session, token_id)
        except ControllerError as e:
            err.print(f"[red]error:[/red] {e.message}")
            raise typer.Exit(1) from e
        session.commit()
    console.print(f"token {token_id} revoked")


# --- over the API ----------------------------------------------------------------------------------


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


@repository_app.command("init")
def repository_init(
    keys: Annotated[Path, typer.Option(help="Keyring holding the release (targets) key.")],
    config: ConfigOpt = None,
) -> None:
    """Create the image repository in the controller's artifact store (signs targets version 1).

    Run once where the release key is available; afterwards the controller can run without it.
    """
    from controller.artifacts import store_from_url
    from controller.registry.repository import REPOSITORY_PREFIX, PrefixedStore
    from manifests.keyring import Keyring
    from manifests.repository import ImageRepository

    settings = _settings(config)
    store = store_from_url(
        settings.resolved_artifact_url,
        s3_endpoint_url=settings.s3_endpoint_url,
        s3_access_key_id=settings.s3_access_key,
        s3_secret_access_key=settings.s3_secret_key,
        s3_region=settings.s3_region,
    )
    repo = ImageRepository(PrefixedStore(store, REPOSITORY_PREFIX), Keyring(keys))
    repo.initialize()
    console.print(f"image repository ready: targets version {repo.targets().signed.version}")


@repository_app.command("pending")
def repository_pending(
    out: Annotated[Path, typer.Option(help="Where to write the unsigned metadata.")],
    url: UrlOpt = None,
    token: TokenOpt = None,
) -> None:
    """Fetch the unsigned targets metadata that waits for the offline release key."""
    pending = _call(_client(url, token), "GET", "/api/v1/repository/targets/pending")
    out.write_text(json.dumps(pending, indent=1, sort_keys=True))
    targets = pending["signed"]["targets"]
    console.print(f"targets version {pending['signed']['version']} with {len(targets)} targets → {out}")


@repository_app.command("sign")
def repository_sign(
    pending: Annotated[Path, typer.Argument(exists=True, dir_okay=False)],
    keys: Annotated[Path, typer.Option(help="Keyring holding the release (targets) key.")],
    out: Annotated[Path, typer.Option(help="Where to write the signed metadata.")],
) -> None:
    """Sign pending targets metadata with the release key (run where that key lives, offline)."""
    from tuf.api.metadata import Metadata, Targets

    from manifests.keyring import Keyring

    md = Metadata[Targets].from_bytes(pending.read_bytes())
    md.signatures.clear()
    for signer in Keyring(keys).signers("targets"):
        md.sign(signer, append=True)
    out.write_bytes(md.to_bytes())
    console.print(f"signed targets version {md.signed.version} with {len(md.signatures)} key(s) → {out}")


@repository_app.command("import")
def repository_import(
    signed: Annotated[Path, typer.Argument(exists=True, dir_okay=False)],
    url: UrlOpt = None,
    token: TokenOpt = None,
) -> None:
    """Publish signed targets metadata; releases it covers become published."""
    result = _call(
        _client(url, token), "PUT", "/api/v1/repository/targets", json_body=json.loads(signed.read_bytes())
    )
    console.print(
        f"targets version {result['targets_version']} published; releases: "
        f"{', '.join(result['published']) or 'none'}"
    )


@broker_app.command("files")
def broker_files(
    out: Annotated[
        Path, typer.Option(help="Folder for `passwd` and `acl` (Mosquitto password_file / acl_file).")
    ],
    controller_user: Annotated[
        str, typer.Option(help="Broker user of the controller's bridge.")
    ] = "edgefleet-controller",
    controller_password_env: Annotated[str, typer.Option(help="Variable holding that user's password.")] = (
        "EDGEFLEET_MQTT_BRIDGE_PASSWORD"
    ),
    url: UrlOpt = None,
    token: TokenOpt = None,
) -> None:
    """Write the broker's password file (active devices + the controller) and ACL; then SIGHUP the broker.

    Revoked devices are absent from the export, so re-running this after a revocation locks them out.
    """
    import os

    from controller.enrollment.credentials import hash_password
    from controller.mqtt.mosquitto_auth import acl_file

    password = os.environ.get(controller_password_env)
    if not password:
        err.print(f"[red]error:[/red] set {controller_password_env} to the controller's broker password")
        raise typer.Exit(2)
    devices = str(_call(_client(url, token), "GET", "/api/v1/broker/password-file") or "")
    if any(line.split(":", 1)[0] == controller_user for line in devices.splitlines()):
        err.print(f"[red]error:[/red] {controller_user!r} is also a device id")
        raise typer.Exit(2)
    out.mkdir(parents=True, exist_ok=True)
    for name, text in (
        ("passwd", devices + f"{controller_user}:{hash_password(password)}\n"),
        ("acl", acl_file([controller_user])),
    ):
        tmp = out / f".{name}.tmp"
        tmp.write_text(text)
        tmp.chmod(0o600)
        tmp.replace(out / name)
    console.print(f"wrote {out / 'passwd'} ({len(devices.splitlines())} devices) and {out / 'acl'}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
