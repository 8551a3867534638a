"""Database access: the SQLAlchemy `Base`, engine construction and sessions.

SQLite (WAL) is the embedded default, PostgreSQL the production database; both run the same Alembic
migrations (`controller.db.migrate`). Engines and session factories are built from settings in
`create_app`, never at import time.
"""

from __future__ import annotations

from controller.db.base import Base, make_engine, make_session_factory

__all__ = ["Base", "make_engine", "make_session_factory"]
