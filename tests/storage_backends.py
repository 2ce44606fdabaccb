"""Each storage backend as the tests see it: the main database and the key store of one deployment, and
what each of them holds on disk (what a backup or a stolen disk would hold).

The `backend` fixture (tests/conftest.py) gives one of these per test, SQLite and PostgreSQL in turn, so a
test module runs its tests on both without copies. Only tests reach past the repositories like this.
"""

from __future__ import annotations

import functools
import sqlite3
from pathlib import Path
from types import ModuleType

import asyncpg
import psycopg

from engine.clock import Clock
from engine.db import Database
from engine.db.postgres import migrations as postgres_migrations
from engine.db.postgres.connection import PostgresDatabase
from engine.db.postgres.keystore import PostgresKeyTable
from engine.db.sqlite import SqliteDatabase
from engine.db.sqlite import migrations as sqlite_migrations
from engine.db.sqlite.keystore import SqliteKeyTable
from engine.vault import KeyTable, encode_master_key, new_master_key
from tests.postgres_server import PostgresServer

Column = tuple[str, str]  # (name, "text" | "bytes" | "number")


def files_in(folder: Path, pattern: str = "*") -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.glob(pattern)) if path.is_file()}


class SqliteBackend:
    """The embedded default: `likeness.sqlite3` and `keys/keys.sqlite3` in the data dir."""

    name = "sqlite"
    migrations: ModuleType = sqlite_migrations
    error: type[Exception] = sqlite3.OperationalError

    def __init__(self, data_dir: Path):
        self.data_dir = data_dir
        self.path = data_dir / "likeness.sqlite3"

    def env(self) -> dict[str, str]:
        return {}

    async def open_db(self, clock: Clock | None = None) -> Database:
        """(Another connection to) this deployment's main database."""
        return await SqliteDatabase.open(self.path, clock)

    def key_table(self) -> KeyTable:
        return SqliteKeyTable(self.data_dir / "keys" / "keys.sqlite3")

    def other_key_table(self) -> KeyTable:
        """The empty key store of another deployment."""
        return SqliteKeyTable(self.data_dir.parent / "elsewhere" / "keys" / "keys.sqlite3")

    async def tables(self, db: Database) -> list[str]:
        rows = await db.fetchall("SELECT name FROM sqlite_master WHERE type='table' ORDER BY name")
        return [row["name"] for row in rows]

    async def columns(self, db: Database, table: str) -> list[Column]:
        kinds = {"TEXT": "text", "BLOB": "bytes"}
        rows = await db.fetchall(f"PRAGMA table_info({table})")
        return [(row["name"], kinds.get(row["type"], "number")) for row in rows]

    async def schema_version(self, db: Database) -> int:
        return (await db.fetchone("PRAGMA user_version"))[0]

    def locking(self, select: str) -> str:
        """A read that keeps other transactions from writing the rows until this one ends (a SQLite
        transaction holds the write lock from BEGIN IMMEDIATE on)."""
        return select

    async def readable_rows(self, db: Database) -> bytes:
        """What a copy of the data dir holds of the main database: the bytes of the file and its WAL
        (secure_delete overwrites erased rows, the checkpoint after an erase empties the WAL)."""
        return b"".join(self.database_files().values())

    def database_files(self) -> dict[str, bytes]:
        """The main database as on disk (file, WAL, shared memory)."""
        return files_in(self.data_dir, "likeness.sqlite3*")

    def key_store_files(self) -> dict[str, bytes]:
        """The key store as on disk, with any journal next to it."""
        return files_in(self.data_dir / "keys")

    def wrapped_key(self, owner: str) -> bytes | None:
        """The owner's wrapped data key, read straight from the key store."""
        with sqlite3.connect(self.data_dir / "keys" / "keys.sqlite3") as db:
            row = db.execute("SELECT wrapped FROM data_keys WHERE owner=?", (owner,)).fetchone()
        return bytes(row[0]) if row else None

    def set_wrapped_key(self, owner: str, wrapped: bytes) -> None:
        """Overwrite the owner's wrapped key behind the key store's back (damage)."""
        with sqlite3.connect(self.data_dir / "keys" / "keys.sqlite3") as db:
            db.execute("UPDATE data_keys SET wrapped=? WHERE owner=?", (wrapped, owner))


class PostgresBackend:
    """Two throw-away databases of the test cluster: the main one and the key store."""

    name = "postgres"
    migrations: ModuleType = postgres_migrations
    error: type[Exception] = asyncpg.PostgresError

    def __init__(self, server: PostgresServer):
        self.server = server

    @functools.cached_property
    def main(self) -> str:
        return self.server.new_database()

    @functools.cached_property
    def keys(self) -> str:
        return self.server.new_database()

    def env(self) -> dict[str, str]:
        return {
            "LIKENESS_DATABASE_URL": self.server.url(self.main),
            "LIKENESS_KEYSTORE_URL": self.server.url(self.keys),
            "LIKENESS_MASTER_KEY": encode_master_key(new_master_key()),
        }

    async def open_db(self, clock: Clock | None = None) -> Database:
        return await PostgresDatabase.open(self.server.url(self.main), clock)

    def key_table(self) -> KeyTable:
        return PostgresKeyTable(self.server.url(self.keys))

    def other_key_table(self) -> KeyTable:
        return PostgresKeyTable(self.server.url(self.server.new_database()))

    async def tables(self, db: Database) -> list[str]:
        rows = await db.fetchall(
            "SELECT table_name AS name FROM information_schema.tables WHERE table_schema='public' "
            "ORDER BY table_name"
        )
        return [row["name"] for row in rows]

    async def columns(self, db: Database, table: str) -> list[Column]:
        """The table's columns, without those the database fills itself (BIGSERIAL)."""
        kinds = {"text": "text", "bytea": "bytes"}
        rows = await db.fetchall(
            "SELECT column_name, data_type FROM information_schema.columns WHERE table_schema='public' "
            "AND table_name=? AND COALESCE(column_default, '') NOT LIKE 'nextval(%' ORDER BY ordinal_position",
            (table,),
        )
        return [(row["column_name"], kinds.get(row["data_type"], "number")) for row in rows]

    async def schema_version(self, db: Database) -> int:
        return (await db.fetchone("SELECT MAX(version) FROM schema_version"))[0]

    def locking(self, select: str) -> str:
        """Transactions run side by side (READ COMMITTED), so a read-then-write locks its rows."""
        return f"{select} FOR UPDATE"

    async def readable_rows(self, db: Database) -> bytes:
        """Every live row of every table, as text. Erased rows stay in PostgreSQL's heap as dead tuples
        until autovacuum (by design, see "What backups still hold" in docs/architecture.md): they hold
        pseudonyms and values sealed with keys that /forget destroys, so here only live rows count."""
        parts = []
        for table in await self.tables(db):
            rows = await db.fetchall(f"SELECT t::text AS row FROM {table} AS t")
            parts += [row["row"].encode() for row in rows]
        return b"\n".join(parts)

    def _files(self, database: str) -> dict[str, bytes]:
        """Every relation file (tables, indexes, TOAST, maps) of one database, flushed to disk first. The
        cluster's WAL is not included: what it holds is documented in docs/architecture.md."""
        self.server.psql("CHECKPOINT")
        oid = self.server.psql(f"SELECT oid FROM pg_database WHERE datname='{database}'")
        return files_in(self.server.folder / "data" / "base" / oid)

    def database_files(self) -> dict[str, bytes]:
        return self._files(self.main)

    def key_store_files(self) -> dict[str, bytes]:
        return self._files(self.keys)

    def wrapped_key(self, owner: str) -> bytes | None:
        with psycopg.connect(self.server.url(self.keys)) as db:
            row = db.execute("SELECT wrapped FROM data_keys WHERE owner=%s", (owner,)).fetchone()
        return bytes(row[0]) if row else None

    def set_wrapped_key(self, owner: str, wrapped: bytes) -> None:
        with psycopg.connect(self.server.url(self.keys)) as db:
            db.execute("UPDATE data_keys SET wrapped=%s WHERE owner=%s", (wrapped, owner))


Backend = SqliteBackend | PostgresBackend
