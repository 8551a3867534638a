"""`edgefleet controller serve | migrate` and `edgefleet tokens create | list | revoke`: commands run on the
controller host. They read the controller settings and write its database directly, which is how the
first admin token comes to exist before any API call can be authorised.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from controller.cli_base import ConfigOpt, JsonOpt, _settings, _table, console, err

controller_app = typer.Typer(help="Run the controller (on the controller host).", no_args_is_help=True)
tokens_app = typer.Typer(
    help="Operator API tokens (on the controller host: writes the database).", no_args_is_help=True
)


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
