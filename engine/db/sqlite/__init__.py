"""The embedded default backend: one SQLite file in the data dir (WAL)."""

from engine.db.sqlite.connection import SqliteDatabase

__all__ = ["SqliteDatabase"]
