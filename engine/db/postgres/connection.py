"""PostgreSQL through an asyncpg connection pool, for deployments beyond one machine.

Statements come from `queries.py` written with `?` / `:name` parameters, turned into asyncpg's `$n` once
per statement. A transaction holds one pooled connection for the task that opened it (a context
variable), so the repositories' code is the same as on SQLite. Idle workers wait on `LISTEN
likeness_jobs` instead of polling; a deadline sweep runs in one process at a time (advisory lock).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import re
import zlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg

from engine.clock import Clock
from engine.db import base
from engine.db.base import Params, Row
from engine.db.postgres import migrations, queries

_PARAM = re.compile(r"'[^']*'|\?|(?<!:):([A-Za-z_]\w*)")
MIGRATION_LOCK = 0x4C494B45  # "LIKE": serialises migrations of processes that start at once


def to_dollar(sql: str) -> tuple[str, list[str | int]]:
    """`?` and `:name` -> `$n`; returns the statement and, per `$n`, the position or name it reads."""
    order: list[str | int] = []
    names: dict[str, int] = {}

    def replace(match: re.Match[str]) -> str:
        text = match.group(0)
        if text.startswith("'"):
            return text  # a string literal: leave its contents alone
        if text == "?":
            order.append(sum(1 for item in order if isinstance(item, int)))
            return f"${len(order)}"
        name = match.group(1)
        if name not in names:
            order.append(name)
            names[name] = len(order)
        return f"${names[name]}"

    return _PARAM.sub(replace, sql), order


class PostgresDatabase(base.Database):
    """A pool of connections to one PostgreSQL database (`LIKENESS_DATABASE_URL`)."""

    sql = queries

    def __init__(self, pool: asyncpg.Pool, clock: Clock, url: str):
        self.pool = pool
        self.clock = clock
        self.url = url
        self.on_deadline = None
        self._tx: contextvars.ContextVar[asyncpg.Connection | None] = contextvars.ContextVar(
            "pg_tx", default=None
        )
        self._converted: dict[str, tuple[str, list[str | int]]] = {}
        self._jobs_waiting = asyncio.Event()
        self._listener: asyncpg.Connection | None = None

    @classmethod
    async def open(cls, url: str, clock: Clock | None = None) -> PostgresDatabase:
        pool = await asyncpg.create_pool(url, min_size=1, max_size=8)
        database = cls(pool, clock or Clock(), url)
        try:
            await database.migrate()
        except BaseException:
            await pool.close()
            raise
        return database

    async def migrate(self) -> int:
        """Apply pending migrations under an advisory lock, so processes starting at once do not race."""
        async with self.pool.acquire() as connection:
            await connection.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK)
            try:
                await connection.execute(
                    "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)"
                )
                version = await connection.fetchval("SELECT MAX(version) FROM schema_version") or 0
                for number, script in enumerate(migrations.MIGRATIONS[version:], start=version + 1):
                    async with connection.transaction():
                        await connection.execute(script)
                        await connection.execute("INSERT INTO schema_version(version) VALUES ($1)", number)
            finally:
                await connection.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK)
        return len(migrations.MIGRATIONS)

    def _prepare(self, sql: str, params: Params) -> tuple[str, list[Any]]:
        if sql not in self._converted:
            self._converted[sql] = to_dollar(sql)
        text, order = self._converted[sql]
        if isinstance(params, dict):
            return text, [params[name] for name in order]
        return text, list(params)

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[asyncpg.Connection]:
        current = self._tx.get()
        if current is not None:
            yield current
            return
        async with self.pool.acquire() as connection:
            yield connection

    async def fetchone(self, sql: str, params: Params = ()) -> Row | None:
        text, args = self._prepare(sql, params)
        async with self._connection() as connection:
            return await connection.fetchrow(text, *args)

    async def fetchall(self, sql: str, params: Params = ()) -> list[Row]:
        text, args = self._prepare(sql, params)
        async with self._connection() as connection:
            return list(await connection.fetch(text, *args))

    async def execute(self, sql: str, params: Params = ()) -> int:
        text, args = self._prepare(sql, params)
        async with self._connection() as connection:
            status = await connection.execute(text, *args)
        count = status.rsplit(" ", 1)[-1]
        return int(count) if count.isdigit() else 0

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[None]:
        if self._tx.get() is not None:
            yield
            return
        async with self.pool.acquire() as connection, connection.transaction():
            token = self._tx.set(connection)
            try:
                yield
            finally:
                self._tx.reset(token)

    async def compact(self) -> None:
        """Nothing to do: deleted rows leave dead tuples that autovacuum reclaims; they hold only
        pseudonyms and values sealed with keys that /forget destroys (see docs/architecture.md)."""

    # -- wake-ups ------------------------------------------------------------------------------------------
    async def notify_jobs(self) -> None:
        """Wake idle workers in every process (sent when the surrounding transaction commits)."""
        await self.execute(self.sql.NOTIFY_JOBS)

    async def wait_for_jobs(self, timeout: float) -> None:
        """Return when a job was queued anywhere (LISTEN/NOTIFY), or after `timeout` seconds."""
        if self._listener is None:
            self._listener = await asyncpg.connect(self.url)
            await self._listener.add_listener("likeness_jobs", lambda *_: self._jobs_waiting.set())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._jobs_waiting.wait(), timeout)
        self._jobs_waiting.clear()

    @asynccontextmanager
    async def exclusive(self, name: str) -> AsyncIterator[bool]:
        """Run a block in at most one process at a time; yields False (skip) if another holds it."""
        key = zlib.crc32(name.encode())
        async with self.pool.acquire() as connection:
            held = await connection.fetchval("SELECT pg_try_advisory_lock($1)", key)
            try:
                yield bool(held)
            finally:
                if held:
                    await connection.execute("SELECT pg_advisory_unlock($1)", key)

    async def close(self) -> None:
        if self._listener is not None:
            await self._listener.close()
        await self.pool.close()
