"""Fixtures for the controller platform tests: a database per test on SQLite and on PostgreSQL, a
keyring, and a running app (TestClient, lifespan included) with admin/operator/viewer tokens.

One PostgreSQL server serves the whole session; each test gets its own fresh database on it, so the
parametrized tests stay independent without paying for a server start each.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient

from controller.app import create_app
from controller.auth import create_api_token
from controller.settings import Settings
from manifests.keyring import Keyring
from tests.services import Postgres, PostgresTemplate


@pytest.fixture(scope="session")
def pg_server(
    tmp_path_factory: pytest.TempPathFactory, postgres_template: PostgresTemplate
) -> Iterator[Postgres]:
    server = Postgres(tmp_path_factory.mktemp("controller-pg"), postgres_template)
    try:
        server.start()
        yield server
    finally:
        server.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'controller.db'}"
    return new_pg_database(request.getfixturevalue("pg_server"))


def new_pg_database(server: Postgres) -> str:
    """A fresh, empty database on `server`; returns its SQLAlchemy URL."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    admin_dsn = server.dsn.rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return server.url.rsplit("/", 1)[0] + "/" + name


@pytest.fixture(scope="session")
def keyring_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("keyring") / "keys"
    Keyring.create(path)
    return path


@dataclass
class ControllerEnv:
    client: TestClient
    settings: Settings
    tokens: dict[str, str]

    def auth(self, role: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[role]}"}

    @property
    def ctx(self) -> Any:
        return self.client.app.state.ctx  # type: ignore[attr-defined]


@contextmanager
def start_env(settings: Settings, **ports: Any) -> Iterator[ControllerEnv]:
    app = create_app(settings, **ports)
    with TestClient(app) as client:
        tokens = {}
        with app.state.ctx.session_factory() as session:
            for role in ("admin", "operator", "viewer"):
                _, tokens[role] = create_api_token(session, name=f"test-{role}", role=role)
            session.commit()
        yield ControllerEnv(client=client, settings=settings, tokens=tokens)


@pytest.fixture
def controller_settings(tmp_path: Path, db_url: str, keyring_dir: Path) -> Settings:
    return Settings(state_dir=tmp_path / "state", database_url=db_url, keys_dir=keyring_dir,
                    mqtt_host="127.0.0.1", mqtt_port=1883)


@pytest.fixture
def env(controller_settings: Settings) -> Iterator[ControllerEnv]:
    with start_env(controller_settings) as started:
        yield started
