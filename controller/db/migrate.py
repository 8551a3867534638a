"""Alembic upgrades run from Python: at start-up, by `edgefleet controller migrate`, and in tests.

The migration scripts ship inside the package (`controller/db/migrations`), so an installed controller
needs no alembic.ini. On PostgreSQL the upgrade holds an advisory lock: several replicas starting at
once run the migrations exactly once, the others wait and find nothing to do.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, text

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
# Arbitrary but fixed: the advisory-lock key every replica agrees on.
_PG_MIGRATION_LOCK_KEY = 0x0EDF1EE7


TABLE_MODULE_NAMES = ("models", "tables")


def load_table_modules() -> list[str]:
    """Import every `controller.<feature>.tables` / `.models` module so `Base.metadata` is complete.

    Features keep their tables beside their code and add their own migration files to this chain;
    autogenerate and the schema check must see all of them, not only the platform's.
    """
    import controller

    root = Path(controller.__path__[0])
    loaded = []
    for name in TABLE_MODULE_NAMES:
        for path in sorted(root.rglob(f"{name}.py")):
            parts = ("controller", *path.relative_to(root).with_suffix("").parts)
            if parts[1] not in ("api", "build"):
                importlib.import_module(".".join(parts))
                loaded.append(".".join(parts))
    return loaded


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the database to `revision` (default: the newest)."""
    config = alembic_config()
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_MIGRATION_LOCK_KEY})
        config.attributes["connection"] = connection
        command.upgrade(config, revision)


def downgrade(engine: Engine, revision: str) -> None:
    config = alembic_config()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, revision)
