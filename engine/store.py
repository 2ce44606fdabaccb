"""The database: aiosqlite, WAL, secure_delete, versioned migrations. The single source of truth.

Users are known only by a pseudonym (keyed hash of the platform id). Personal values that must be kept
(where to deliver, face fingerprints) are stored sealed by the vault; no image bytes are ever stored here.
`erase_user` deletes every row of one user in one transaction.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import secrets
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiosqlite

from engine.clock import Clock, FakeClock

__all__ = ["Clock", "FakeClock", "Store", "new_id"]

# Every table that holds a user's rows, in deletion order. `erase_user` and the tests use this list.
USER_TABLES = (
    "sent_messages",
    "deliveries",
    "outputs",
    "deadlines",
    "jobs",
    "adapters",
    "photos",
    "consents",
    "users",
)

MIGRATIONS: list[str] = [
    # 1: the initial schema
    """
    CREATE TABLE users (
        id TEXT PRIMARY KEY,              -- pseudonym: keyed hash of platform + platform user id
        platform TEXT NOT NULL,
        chat BLOB,                        -- sealed: where to deliver (platform chat id, user id)
        model_retention REAL,             -- user's own choice (seconds), NULL = operator default
        message_retention REAL,           -- user's own choice (seconds), NULL = operator default, 0 = off
        created_at REAL NOT NULL,
        last_active_at REAL NOT NULL
    );
    CREATE TABLE consents (
        id TEXT PRIMARY KEY,
        user_id TEXT NOT NULL REFERENCES users(id),
        policy_version TEXT NOT NULL,
        attested TEXT NOT NULL,
        given_at REAL NOT NULL,
        withdrawn_at REAL
    );
    CREATE TABLE photos (
        id TEXT PRIMARY KEY,              -- also the blob id of the encrypted face crop
        user_id TEXT NOT NULL REFERENCES users(id),
        fingerprint BLOB NOT NULL,        -- sealed: face embedding + perceptual hash
        width INTEGER NOT NULL,
        height INTEGER NOT NULL,
        created_at REAL NOT NULL
    );
    CREATE TABLE adapters (
        id TEXT PRIMARY KEY,              -- also the blob id of the encrypted LoRA
        user_id TEXT NOT NULL REFERENCES users(id),
        token TEXT NOT NULL,
        losses TEXT NOT NULL,             -- JSON list of floats, no personal data
        created_at REAL NOT NULL,
        last_used_at REAL NOT NULL
    );
    CREATE TABLE jobs (
        id TEXT PRIMARY KEY,
        user_id TEXT NOT NULL REFERENCES users(id),
        kind TEXT NOT NULL,               -- 'train' | 'generate'
        payload TEXT NOT NULL,            -- JSON, no personal data
        state TEXT NOT NULL,              -- queued | running | done | failed | cancelled
        attempts INTEGER NOT NULL DEFAULT 0,
        max_attempts INTEGER NOT NULL,
        not_before REAL NOT NULL,
        lease_until REAL,
        worker TEXT,
        progress REAL NOT NULL DEFAULT 0,
        stage TEXT NOT NULL DEFAULT '',
        error TEXT,
        created_at REAL NOT NULL,
        started_at REAL,
        finished_at REAL
    );
    CREATE INDEX jobs_state ON jobs(state, not_before);
    CREATE TABLE outputs (
        id TEXT PRIMARY KEY,              -- also the blob id of the encrypted portrait
        user_id TEXT NOT NULL REFERENCES users(id),
        job_id TEXT NOT NULL,
        preset TEXT NOT NULL,
        position INTEGER NOT NULL,
        created_at REAL NOT NULL,
        delivered_at REAL
    );
    CREATE TABLE deliveries (
        id TEXT PRIMARY KEY,              -- outbox: one row per finished job to send
        user_id TEXT NOT NULL REFERENCES users(id),
        job_id TEXT NOT NULL UNIQUE,
        kind TEXT NOT NULL,               -- trained | portraits | failed
        state TEXT NOT NULL,              -- pending | sent | undeliverable
        attempts INTEGER NOT NULL DEFAULT 0,
        not_before REAL NOT NULL DEFAULT 0, -- retry backoff after a failed send
        created_at REAL NOT NULL,
        sent_at REAL
    );
    CREATE TABLE sent_messages (
        id TEXT PRIMARY KEY,
        user_id TEXT NOT NULL REFERENCES users(id),
        message_id TEXT NOT NULL,
        job_id TEXT,                      -- the job a progress message follows
        kind TEXT NOT NULL,               -- 'result' | 'progress'
        sent_at REAL NOT NULL
    );
    CREATE TABLE deadlines (
        id TEXT PRIMARY KEY,
        user_id TEXT NOT NULL REFERENCES users(id),
        kind TEXT NOT NULL,               -- photos | adapter | output | message | job
        ref_id TEXT NOT NULL,
        due_at REAL NOT NULL,
        UNIQUE(kind, ref_id)
    );
    CREATE INDEX deadlines_due ON deadlines(due_at);
    CREATE TABLE job_durations (          -- measured durations for ETAs, no user reference
        kind TEXT NOT NULL,
        seconds REAL NOT NULL,
        finished_at REAL NOT NULL
    );
    CREATE TABLE audit (                  -- what happened, never to whom
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        at REAL NOT NULL,
        action TEXT NOT NULL,
        detail TEXT NOT NULL
    );
    """,
    # 2: languages. users.language: the user's /language choice (NULL: none); users.platform_language: the
    # language their platform last reported; consents.language: the language of the policy text agreed to
    # (every consent before this was to the English text).
    """
    ALTER TABLE users ADD COLUMN language TEXT;
    ALTER TABLE users ADD COLUMN platform_language TEXT;
    ALTER TABLE consents ADD COLUMN language TEXT NOT NULL DEFAULT 'en';
    """,
]


def _bind(params: Iterable[Any] | dict[str, Any]) -> tuple[Any, ...] | dict[str, Any]:
    return params if isinstance(params, dict) else tuple(params)


def new_id() -> str:
    """A random opaque id (also used as blob id)."""
    return secrets.token_hex(12)


class Store:
    """One aiosqlite connection and the data functions every other module uses."""

    def __init__(self, db: aiosqlite.Connection, clock: Clock):
        self.db = db
        self.clock = clock
        # Called with the due time of every deadline written, so a scheduler can wake up in time.
        self.on_deadline: Callable[[float], None] | None = None
        # One connection is shared by many tasks: a transaction holds the lock so that no other task's
        # statement lands inside it. Statements outside a transaction take the lock briefly.
        self._lock = asyncio.Lock()
        self._in_transaction: contextvars.ContextVar[bool] = contextvars.ContextVar("in_tx", default=False)

    @classmethod
    async def open(cls, path: Path, clock: Clock | None = None) -> Store:
        path.parent.mkdir(parents=True, exist_ok=True)
        db = await aiosqlite.connect(path, isolation_level=None)
        db.row_factory = aiosqlite.Row
        for pragma in (
            "PRAGMA journal_mode=WAL",
            "PRAGMA secure_delete=ON",
            "PRAGMA busy_timeout=10000",
            "PRAGMA synchronous=NORMAL",
            "PRAGMA foreign_keys=ON",
        ):
            await db.execute(pragma)
        store = cls(db, clock or Clock())
        try:
            await store.migrate()
        except BaseException:
            await db.close()
            raise
        return store

    async def close(self) -> None:
        await self.db.close()

    async def migrate(self) -> int:
        """Apply pending migrations; returns the schema version."""
        version = (await (await self.db.execute("PRAGMA user_version")).fetchone())[0]
        for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
            await self.db.execute("BEGIN IMMEDIATE")
            try:
                for statement in script.split(";"):
                    if statement.strip():
                        await self.db.execute(statement)
                await self.db.execute(f"PRAGMA user_version={number}")
                await self.db.execute("COMMIT")
            except BaseException:
                await self.db.execute("ROLLBACK")
                raise
        return len(MIGRATIONS)

    # -- small helpers -------------------------------------------------------------------------------
    @asynccontextmanager
    async def _turn(self) -> AsyncIterator[None]:
        if self._in_transaction.get():
            yield
            return
        async with self._lock:
            yield

    async def fetchone(self, sql: str, params: Iterable[Any] | dict[str, Any] = ()) -> aiosqlite.Row | None:
        async with self._turn(), self.db.execute(sql, _bind(params)) as cursor:
            return await cursor.fetchone()

    async def fetchall(self, sql: str, params: Iterable[Any] | dict[str, Any] = ()) -> list[aiosqlite.Row]:
        async with self._turn(), self.db.execute(sql, _bind(params)) as cursor:
            return list(await cursor.fetchall())

    async def execute(self, sql: str, params: Iterable[Any] | dict[str, Any] = ()) -> int:
        async with self._turn(), self.db.execute(sql, _bind(params)) as cursor:
            return cursor.rowcount

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[None]:
        """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on error), exclusive among this store's tasks."""
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

    async def checkpoint(self) -> None:
        """Fold the WAL into the database and truncate it, so deleted rows do not linger there."""
        async with self._turn():
            await self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    async def audit(self, action: str, **detail: Any) -> None:
        """Record an action. Callers pass counts and kinds only, never ids of people or content."""
        await self.execute(
            "INSERT INTO audit(at, action, detail) VALUES (?,?,?)",
            (self.clock.now(), action, json.dumps(detail, sort_keys=True)),
        )

    # -- users ---------------------------------------------------------------------------------------
    async def ensure_user(self, user_id: str, platform: str, sealed_chat: bytes | None) -> bool:
        """Create the user row if missing (True if created); refresh the delivery address."""
        now = self.clock.now()
        created = await self.execute(
            "INSERT OR IGNORE INTO users(id, platform, chat, created_at, last_active_at) VALUES (?,?,?,?,?)",
            (user_id, platform, sealed_chat, now, now),
        )
        if not created:
            await self.execute(
                "UPDATE users SET last_active_at=?, chat=COALESCE(?, chat) WHERE id=?",
                (now, sealed_chat, user_id),
            )
        return created > 0

    async def user(self, user_id: str) -> aiosqlite.Row | None:
        return await self.fetchone("SELECT * FROM users WHERE id=?", (user_id,))

    # -- erasure -------------------------------------------------------------------------------------
    async def erase_user(self, user_id: str) -> dict[str, int]:
        """Delete every row of one user in one transaction; returns counts per table."""
        counts: dict[str, int] = {}
        async with self.transaction():
            for table in USER_TABLES:
                column = "id" if table == "users" else "user_id"
                counts[table] = await self.execute(f"DELETE FROM {table} WHERE {column}=?", (user_id,))
        await self.checkpoint()
        return counts
