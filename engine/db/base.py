"""What every storage backend offers the repositories: statements by name, a transaction, a clock.

A backend is one folder (`engine/db/sqlite/`, ...) with a `Database` subclass, its migrations and its
`queries` module: every SQL statement the engine runs, in that backend's dialect, by name. Repositories
(`engine/db/tables.py`) and the queue only ever name statements (`db.sql.PHOTO_COUNT`); no other module
holds SQL.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from types import ModuleType
from typing import Any

from engine.clock import Clock

Row = Mapping[str, Any]
Params = tuple[Any, ...] | dict[str, Any]

# Every table that holds a user's rows, in deletion order (children first).
USER_TABLES = (
    "sent_messages",
    "deliveries",
    "outputs",
    "deadlines",
    "jobs",
    "adapters",
    "photos",
    "consents",
    "admissions",
    "users",
)


def new_id() -> str:
    """A random opaque id (also used as blob id)."""
    return secrets.token_hex(12)


class Database:
    """One backend's connection(s). Subclasses implement the five primitives below."""

    sql: ModuleType  # the backend's `queries` module
    clock: Clock
    # Called with the due time of every deadline written, so a scheduler can wake up in time.
    on_deadline: Callable[[float], None] | None = None

    async def fetchone(self, sql: str, params: Params = ()) -> Row | None:
        raise NotImplementedError

    async def fetchall(self, sql: str, params: Params = ()) -> list[Row]:
        raise NotImplementedError

    async def execute(self, sql: str, params: Params = ()) -> int:
        """Run a statement; returns the number of rows changed."""
        raise NotImplementedError

    def transaction(self) -> AbstractAsyncContextManager[None]:
        """All statements of this task inside the block commit together (or not at all)."""
        raise NotImplementedError

    async def compact(self) -> None:
        """Make deleted rows unrecoverable from the database files (WAL, free pages)."""
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    # -- coordination between processes; the embedded default needs none ------------------------------
    async def notify_jobs(self) -> None:
        """Tell idle workers elsewhere that a job was queued (a no-op where they poll)."""

    async def wait_for_jobs(self, timeout: float) -> None:
        """Return when a job may have been queued, at the latest after `timeout` seconds."""
        await asyncio.sleep(timeout)

    @asynccontextmanager
    async def exclusive(self, name: str) -> AsyncIterator[bool]:
        """Run a block in one process at a time; yields False when another process holds `name`."""
        yield True
