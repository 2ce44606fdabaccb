"""SQLite through aiosqlite: WAL, secure_delete, versioned migrations; one connection per process.

aiosqlite serialises statements but not transactions, so a lock keeps other tasks' statements out of a
running transaction. Statements outside a transaction take the lock briefly.
"""

from __future__ import annotations

import asyncio
import contextvars
import os
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiosqlite

from engine.clock import Clock
from engine.db import base
from engine.db.base import Params, Row
from engine.db.sqlite import migrations, queries

PRAGMAS = (
    "PRAGMA busy_timeout=10000",  # first: the others may wait for another process opening the same file
    "PRAGMA journal_mode=WAL",
    "PRAGMA secure_delete=ON",
    "PRAGMA synchronous=NORMAL",
    "PRAGMA foreign_keys=ON",
)


async def _execute_waiting(db: aiosqlite.Connection, statement: str, attempts: int = 50) -> None:
    """Run `statement`, waiting while another process holds the lock it needs. Switching a new file to WAL
    answers "database is locked" at once (SQLite does not call the busy handler there), for example when
    several processes open a new database together."""
    for attempt in range(attempts):
        try:
            await db.execute(statement)
            return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or attempt == attempts - 1:
                raise
            await asyncio.sleep(0.1)


class SqliteDatabase(base.Database):
    """One aiosqlite connection to a database file in the data dir."""

    sql = queries

    def __init__(self, db: aiosqlite.Connection, clock: Clock):
        self.db = db
        self.clock = clock
        self.on_deadline = None
        self._lock = asyncio.Lock()
        self._in_transaction: contextvars.ContextVar[bool] = contextvars.ContextVar("in_tx", default=False)

    @classmethod
    async def open(cls, path: Path, clock: Clock | None = None) -> SqliteDatabase:
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():  # created private: rows are pseudonymous, but still nobody else's business
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
        db = await aiosqlite.connect(path, isolation_level=None)
        db.row_factory = aiosqlite.Row
        for pragma in PRAGMAS:
            await _execute_waiting(db, pragma)
        database = cls(db, clock or Clock())
        try:
            await database.migrate()
        except BaseException:
            await db.close()
            raise
        return database

    async def close(self) -> None:
        await self.db.close()

    async def migrate(self) -> int:
        """Apply pending migrations; returns the schema version. The version is read inside the write
        transaction, so processes starting at once on a new data dir apply each migration once."""
        await self.db.execute("BEGIN IMMEDIATE")
        try:
            version = (await (await self.db.execute("PRAGMA user_version")).fetchone())[0]
            for number, script in enumerate(migrations.MIGRATIONS[version:], start=version + 1):
                for statement in script.split(";"):
                    if statement.strip():
                        await self.db.execute(statement)
                await self.db.execute(f"PRAGMA user_version={number}")
            await self.db.execute("COMMIT")
        except BaseException:
            await self.db.execute("ROLLBACK")
            raise
        return len(migrations.MIGRATIONS)

    @asynccontextmanager
    async def _turn(self) -> AsyncIterator[None]:
        if self._in_transaction.get():
            yield
            return
        async with self._lock:
            yield

    async def fetchone(self, sql: str, params: Params = ()) -> Row | None:
        async with self._turn(), self.db.execute(sql, params) as cursor:
            return await cursor.fetchone()

    async def fetchall(self, sql: str, params: Params = ()) -> list[Row]:
        async with self._turn(), self.db.execute(sql, params) as cursor:
            return list(await cursor.fetchall())

    async def execute(self, sql: str, params: Params = ()) -> int:
        async with self._turn(), self.db.execute(sql, params) as cursor:
            return cursor.rowcount

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[None]:
        """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on error), exclusive among this connection's tasks."""
        if self._in_transaction.get():
            yield
            return
        async with self._lock:
            token = self._in_transaction.set(True)
            try:
                await self.db.execute("BEGIN IMMEDIATE")
                try:
                    yield
                except BaseException:
                    await self.db.execute("ROLLBACK")
                    raise
                await self.db.execute("COMMIT")
            finally:
                self._in_transaction.reset(token)

    async def compact(self) -> None:
        """Fold the WAL into the database and truncate it, so deleted rows do not linger there
        (secure_delete already zeroes freed pages)."""
        async with self._turn():
            await self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
