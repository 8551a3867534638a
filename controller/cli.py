"""`edgefleet`: the operator command line (and `edgefleet controller serve`).

Sub-applications live beside the feature they drive and are mounted here.
"""

from __future__ import annotations

import typer

from controller.keys_cli import app as keys_app

app = typer.Typer(help="edgefleet operator CLI", no_args_is_help=True)
app.add_typer(keys_app, name="keys", help="Create and rotate the trust-chain signing keys.")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
