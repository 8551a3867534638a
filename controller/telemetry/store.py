"""Writing one flush's rows: the fast path and the conflict path, on PostgreSQL and SQLite.

The fast path (`bulk_insert`) writes each table with one COPY on PostgreSQL (an executemany on SQLite)
and fails on any duplicate; the conflict path (`insert_new_batches`, `insert_new_model_points`,
`insert_skipping_duplicates`) inserts with ON CONFLICT DO NOTHING and reads back what it inserted,
so the unique keys, not a read before the write, decide what is new. Transactions belong to the
caller; nothing here commits.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Table, insert
from sqlalchemy.orm import Session

from controller.telemetry.rows import BATCH_COLUMNS, MODEL_COLUMNS, FlushRows, as_dicts, copy_text
from controller.telemetry.tables import ModelPointRow, SystemPointRow, TelemetryBatchRow

_TABLES: dict[str, Table] = {
    "telemetry_batches": TelemetryBatchRow.__table__,  # type: ignore[dict-item]
    "telemetry_system_points": SystemPointRow.__table__,  # type: ignore[dict-item]
    "telemetry_model_points": ModelPointRow.__table__,  # type: ignore[dict-item]
}


def bulk_insert(session: Session, table: str, columns: Sequence[str], values: list[tuple[Any, ...]]) -> None:
    """Insert many rows in the session's transaction: one COPY on PostgreSQL (one round trip, the rows
    rendered as COPY text here rather than adapted value by value), an executemany elsewhere."""
    connection = session.connection()
    if connection.dialect.name != "postgresql":
        connection.execute(insert(_TABLES[table]), as_dicts(columns, values))
        return
    driver = connection.connection.driver_connection
    assert driver is not None
    with driver.cursor() as cursor, cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
        copy.write(copy_text(table, values))


def _conflict_free_insert(session: Session, table: str) -> Any:
    dialect = session.connection().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as dialect_insert
    elif dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as dialect_insert  # type: ignore[assignment]
    else:
        raise RuntimeError(f"telemetry ingest supports SQLite and PostgreSQL, not {dialect}")
    return dialect_insert(_TABLES[table]).on_conflict_do_nothing()


def insert_new_batches(session: Session, rows: FlushRows) -> set[tuple[str, str, int]]:
    """Insert the flush's batch rows the database does not have; returns the keys of those inserted.
    The unique key decides (not a read before the insert), so two replicas racing cannot both win."""
    t = _TABLES["telemetry_batches"]
    statement = _conflict_free_insert(session, "telemetry_batches").returning(t.c.device_id, t.c.stream, t.c.seq)
    inserted = session.connection().execute(statement, as_dicts(BATCH_COLUMNS, list(rows.batches.values())))
    return {(r[0], r[1], r[2]) for r in inserted}


def model_key(row: tuple[Any, ...]) -> tuple[Any, ...]:
    """(device, model, version, variant, resolution, start) of a model row; the start rounded to the
    database's microseconds so that a value read back compares equal."""
    return (*row[0:1], *row[2:6], round(float(row[6]), 6))


def insert_new_model_points(session: Session, values: list[tuple[Any, ...]]) -> set[tuple[Any, ...]]:
    t = _TABLES["telemetry_model_points"]
    statement = _conflict_free_insert(session, "telemetry_model_points").returning(
        t.c.device_id, t.c.model, t.c.version, t.c.variant, t.c.resolution_s, t.c.start_at)
    inserted = session.connection().execute(statement, as_dicts(MODEL_COLUMNS, values))
    return {(r[0], r[1], r[2], r[3], r[4], round(r[5].timestamp(), 6)) for r in inserted}


def insert_skipping_duplicates(session: Session, table: str, columns: Sequence[str],
                                values: list[tuple[Any, ...]]) -> None:
    session.connection().execute(_conflict_free_insert(session, table), as_dicts(columns, values))
