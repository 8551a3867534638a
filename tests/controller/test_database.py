"""Migrations and settings: the Alembic chain builds exactly the models' schema on SQLite and PostgreSQL,
runs once under concurrent start-ups, downgrades cleanly; health reports an unmigrated database."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from fastapi.testclient import TestClient
from sqlalchemy import inspect

from controller.app import create_app
from controller.db import Base, make_engine
from controller.db import migrate as db_migrate
from controller.settings import Settings
from tests.controller.conftest import new_pg_database
from tests.services import Postgres


def test_migrations_match_the_models_and_downgrade(db_url: str) -> None:
    assert "controller.db.models" in db_migrate.load_table_modules()
    engine = make_engine(db_url)
    assert db_migrate.current_revision(engine) is None
    db_migrate.upgrade(engine)
    assert db_migrate.current_revision(engine) == db_migrate.head_revision()
    with engine.connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection, opts={"compare_type": True}), Base.metadata)
    assert diff == [], f"models and migrations disagree: {diff}"
    db_migrate.upgrade(engine)  # idempotent
    db_migrate.downgrade(engine, "base")
    assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    engine.dispose()


def test_concurrent_upgrades_on_postgresql_run_once(pg_server: Postgres) -> None:
    db_url = new_pg_database(pg_server)
    engines = [make_engine(db_url) for _ in range(3)]
    errors: list[BaseException] = []

    def run(index: int) -> None:
        try:
            db_migrate.upgrade(engines[index])
        except BaseException as e:  # collected and re-raised in the test thread
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert db_migrate.current_revision(engines[0]) == db_migrate.head_revision()
    for e in engines:
        e.dispose()


def test_health_reports_an_unmigrated_database(tmp_path: Path, db_url: str) -> None:
    settings = Settings(state_dir=tmp_path / "state", database_url=db_url, migrate_on_start=False)
    with TestClient(create_app(settings)) as client:
        r = client.get("/healthz")
        assert r.status_code == 503 and "migrations" in r.json()["error"]["message"]
        db_migrate.upgrade(client.app.state.ctx.engine)  # type: ignore[attr-defined]
        assert client.get("/healthz").json()["schema_revision"] == db_migrate.head_revision()


def test_settings_precedence_file_env_overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "controller.toml"
    config.write_text('port = 9000\nmqtt_host = "broker.lan"\ndatabase_url = "sqlite:///from-file.db"\n')
    monkeypatch.setenv("EDGEFLEET_PORT", "9100")
    settings = Settings.load(config)
    assert (settings.port, settings.mqtt_host, settings.database_url) == (9100, "broker.lan", "sqlite:///from-file.db")
    assert Settings.load(config, port=1).port == 1
    monkeypatch.setenv("EDGEFLEET_CONFIG", str(config))
    assert Settings.load().mqtt_host == "broker.lan"
    with pytest.raises(FileNotFoundError):
        Settings.load(tmp_path / "missing.toml")
    config.write_text("port = [unclosed\n")
    with pytest.raises(ValueError, match="not valid TOML"):
        Settings.load(config)
    with pytest.raises(ValueError, match="build_variants"):
        Settings(build_variants=("tflite-int8",))
    config.write_text("no_such_setting = 1\n")
    with pytest.raises(ValueError, match="no_such_setting"):
        Settings.load(config)


def test_sqlite_runs_in_wal_mode(tmp_path: Path) -> None:
    from sqlalchemy import text

    engine = make_engine(f"sqlite:///{tmp_path / 'wal.db'}")
    with engine.connect() as connection:
        assert connection.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert connection.execute(text("PRAGMA foreign_keys")).scalar() == 1
    engine.dispose()


def test_defaults_put_everything_under_the_state_folder(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path / "s")
    assert settings.resolved_database_url == f"sqlite:///{(tmp_path / 's' / 'controller.db').resolve()}"
    assert settings.resolved_artifact_url.startswith("file://") and settings.resolved_keys_dir == tmp_path / "s" / "keys"
    assert "EDGEFLEET_DATABASE_URL" not in os.environ or settings.database_url
