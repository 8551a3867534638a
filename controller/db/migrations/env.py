"""Alembic environment: always runs on the connection handed in by `controller.db.migrate`."""

from __future__ import annotations

from alembic import context

from controller.db.base import Base
from controller.db.migrate import load_table_modules

load_table_modules()  # every feature's tables on Base.metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through controller.db.migrate (or `edgefleet controller migrate`)")

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
