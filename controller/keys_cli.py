"""`edgefleet keys`: create and rotate the trust-chain signing keys (see manifests/keyring.py).

    edgefleet keys init DIR                      all keys + version 1 of the image and director roots
    edgefleet keys rotate ROLE --keys DIR        fresh keys for ROLE through a new root version
    edgefleet keys show --keys DIR               roles, thresholds, key ids and expiry

With `--repo FOLDER`, `rotate` also publishes the new root into a local-folder image repository and
re-signs snapshot and timestamp, so devices pick the rotation up on their next refresh.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from manifests.errors import ManifestError
from manifests.keyring import ALL_ROLES, Keyring
from manifests.repository import ImageRepository
from manifests.store import LocalFolderStore

app = typer.Typer(no_args_is_help=True)

KeysDir = Annotated[Path, typer.Option("--keys", help="Keyring folder created by `edgefleet keys init`.")]


def _fail(e: Exception) -> typer.Exit:
    typer.echo(f"error: {e}", err=True)
    return typer.Exit(code=1)


@app.command("init")
def init(
    directory: Annotated[Path, typer.Argument(help="Folder to create the keyring in.")],
    root_keys: int = typer.Option(3, help="Number of offline image-root keys."),
    root_threshold: int = typer.Option(2, help="Image-root signatures required."),
    director_root_keys: int = typer.Option(1, help="Number of director-root keys."),
    director_root_threshold: int = typer.Option(1, help="Director-root signatures required."),
    director_keys: int = typer.Option(1, help="Number of online director (assignment) keys."),
    director_threshold: int = typer.Option(1, help="Director signatures required on an assignment."),
) -> None:
    """Create every Ed25519 key (private files 0600) and version 1 of both roots."""
    try:
        ring = Keyring.create(
            directory,
            root_keys=root_keys,
            root_threshold=root_threshold,
            director_root_keys=director_root_keys,
            director_root_threshold=director_root_threshold,
            director_keys=director_keys,
            director_threshold=director_threshold,
        )
    except (ManifestError, OSError) as e:
        raise _fail(e) from e
    typer.echo(f"keyring created in {ring.path}")
    typer.echo(f"  image root:    {ring.path / 'image-root' / '1.root.json'}  (pin on devices at enrollment)")
    typer.echo(
        f"  director root: {ring.path / 'director-root' / '1.root.json'}  (pin on devices at enrollment)"
    )


@app.command("rotate")
def rotate(
    role: Annotated[str, typer.Argument(help=f"One of: {', '.join(ALL_ROLES)}.")],
    keys: KeysDir,
    repo: Annotated[Path | None, typer.Option(help="Local image-repository folder to publish to.")] = None,
    count: Annotated[
        int | None, typer.Option(help="Number of new keys (default: as many as before).")
    ] = None,
) -> None:
    """Replace ROLE's keys via a new root version signed by the old (and, for root, the new) root keys."""
    try:
        ring = Keyring(keys)
        md = ring.rotate(role, new_key_count=count)
        kind = "director" if role.startswith("director") else "image"
        typer.echo(
            f"{kind} root v{md.signed.version} written; {role} now uses "
            f"{', '.join(k[:16] for k in _role_keyids(ring, role))}"
        )
        if repo is not None and kind == "image":
            image = ImageRepository(LocalFolderStore(repo), ring)
            image.publish_roots()
            image.refresh_snapshot()
            typer.echo(f"published root v{md.signed.version} to {repo} and re-signed snapshot/timestamp")
        elif kind == "director":
            typer.echo(
                "the controller attaches the new director root to every assignment it signs from now on"
            )
    except (ManifestError, OSError) as e:
        raise _fail(e) from e


def _role_keyids(ring: Keyring, role: str) -> list[str]:
    kind = "director" if role.startswith("director") else "image"
    tuf_role = {"director-root": "root", "director": "targets"}.get(role, role)
    return list(ring.root(kind).signed.roles[tuf_role].keyids)


@app.command("show")
def show(keys: KeysDir) -> None:
    """Print both roots: version, expiry, and each role's threshold and key ids."""
    try:
        ring = Keyring(keys)
        for kind in ("image", "director"):
            root = ring.root(kind).signed
            typer.echo(f"{kind} root v{root.version}, expires {root.expires.isoformat()}")
            for name, r in root.roles.items():
                if r.keyids:
                    label = (
                        {"root": "director-root", "targets": "director"}.get(name, name)
                        if kind == "director"
                        else name
                    )
                    typer.echo(
                        f"  {label:<14} {r.threshold} of {len(r.keyids)}: "
                        f"{', '.join(k[:16] for k in r.keyids)}"
                    )
    except (ManifestError, OSError) as e:
        raise _fail(e) from e
