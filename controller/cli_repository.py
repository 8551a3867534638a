"""`edgefleet repository init | pending | sign | import` and `edgefleet broker files`.

The repository commands carry the offline release-key workflow: `pending` fetches what waits for the key,
`sign` runs where the key lives (no controller needed), `import` publishes the signed metadata. `broker
files` writes Mosquitto's password and ACL files from the enrolled fleet.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from controller.cli_base import ConfigOpt, TokenOpt, UrlOpt, _call, _client, _settings, console, err

repository_app = typer.Typer(
    help="The image repository and the offline release-key workflow.", no_args_is_help=True
)
broker_app = typer.Typer(help="Files for the MQTT broker.", no_args_is_help=True)


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
