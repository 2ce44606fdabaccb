"""Storage: a `Database` per backend (one folder each) and small per-table repositories over it.

`open_database` picks the backend: PostgreSQL when `LIKENESS_DATABASE_URL` is set, else the embedded
default, SQLite in the data dir.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from engine.clock import Clock
from engine.db.base import USER_TABLES, Database, new_id
from engine.db.tables import Tables

if TYPE_CHECKING:
    from engine.settings import Settings

__all__ = ["USER_TABLES", "Database", "Tables", "new_id", "open_database"]

DATABASE_FILE = "likeness.sqlite3"


async def open_database(settings: Settings, clock: Clock | None = None) -> Database:
    """Open (and migrate) the database of this deployment."""
    if settings.database_url:
        from engine.db.postgres.connection import PostgresDatabase

        return await PostgresDatabase.open(settings.database_url, clock)
    from engine.db.sqlite import SqliteDatabase

    return await SqliteDatabase.open(settings.data_dir / DATABASE_FILE, clock)
