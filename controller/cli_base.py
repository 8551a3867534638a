"""What the `edgefleet` command groups share: the common options, the consoles, the settings loader,
the API client and the table printer. Failures print one red line and exit; no traceback reaches the
operator.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from controller.api_client import ApiClient, ApiClientError, ClientConfig

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
