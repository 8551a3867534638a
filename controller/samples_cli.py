"""`edgefleet samples …`: captured samples, read straight from the controller's database and store.

    edgefleet samples export --model M [--since 2026-11-01T00:00:00Z] --out DIR [--config FILE]
    edgefleet samples list --model M [--since T] [--json]

Runs on the controller host (like `edgefleet tokens`), because export reads every sample object;
the dataset format is described in `controller.samples.export`.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(help="Samples captured on devices for retraining.", no_args_is_help=True)
err = Console(stderr=True)

ConfigOpt = Annotated[Path | None, typer.Option("--config", help="Controller settings file (TOML).")]
SinceOpt = Annotated[str | None, typer.Option("--since", help="ISO 8601 time; samples captured at or after it.")]


def _since(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as e:
        err.print(f"[red]error:[/red] --since {value!r} is not an ISO 8601 time")
        raise typer.Exit(2) from e
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def _open(config: Path | None) -> tuple[Any, Any]:
    from controller.artifacts import store_from_url
    from controller.db import make_engine, make_session_factory
    from controller.db import migrate as db_migrate
    from controller.settings import Settings

    try:
        settings = Settings.load(config)
    except (FileNotFoundError, ValueError) as e:
        err.print(f"[red]error:[/red] {e}")
        raise typer.Exit(2) from e
    engine = make_engine(settings.resolved_database_url)
    db_migrate.upgrade(engine)
    store = store_from_url(settings.resolved_artifact_url, s3_endpoint_url=settings.s3_endpoint_url,
                           s3_access_key_id=settings.s3_access_key, s3_secret_access_key=settings.s3_secret_key,
                           s3_region=settings.s3_region)
    return make_session_factory(engine), store


@app.command("export")
def export(
    model: Annotated[str, typer.Option("--model", help="Model name.")],
    out: Annotated[Path, typer.Option("--out", help="Folder for dataset.npz and manifest.json.")],
    since: SinceOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Write the uploaded samples of a model as a dataset a training script can read."""
    from controller.samples.export import export_dataset

    factory, store = _open(config)
    with factory() as db:
        manifest = export_dataset(db, store, model, out, since=_since(since))
    err.print(f"exported {manifest['count']} samples of {model} to {out}"
              + (f" ({len(manifest['skipped'])} skipped)" if manifest["skipped"] else ""))


@app.command("list")
def list_(
    model: Annotated[str | None, typer.Option("--model")] = None,
    since: SinceOpt = None,
    config: ConfigOpt = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Uploaded samples' metadata."""
    from controller.samples.service import list_samples, row_dict

    factory, _ = _open(config)
    with factory() as db:
        rows = [row_dict(r) for r in list_samples(db, model=model, since=_since(since))]
    if as_json:
        typer.echo(json.dumps(rows, indent=1))
        return
    table = Table(title="samples")
    for column in ("captured_at", "device_id", "model", "version", "reason", "confidence", "size_bytes"):
        table.add_column(column)
    for row in rows:
        table.add_row(*(str(row[c]) for c in ("captured_at", "device_id", "model", "version", "reason",
                                              "confidence", "size_bytes")))
    Console().print(table)
