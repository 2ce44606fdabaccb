"""Storage: a `Database` per backend (one folder each) and small per-table repositories over it.

`open_database` picks the backend; today the embedded default, SQLite in the data dir.
"""

from __future__ import annotations

from pathlib import Path

from engine.clock import Clock
from engine.db.base import USER_TABLES, Database, new_id
from engine.db.tables import Tables

__all__ = ["USER_TABLES", "Database", "Tables", "new_id", "open_database"]

DATABASE_FILE = "likeness.sqlite3"


async def open_database(data_dir: Path, clock: Clock | None = None) -> Database:
    """Open (and migrate) the database of this deployment."""
    from engine.db.sqlite import SqliteDatabase

    return await SqliteDatabase.open(data_dir / DATABASE_FILE, clock)
