"""Deadlines: every personal artifact has a deletion time in the database; this module keeps them.

- `Retention.set_deadline` records one when an artifact is created (or its lifetime changes).
- `Retention.expire` deletes one artifact (idempotent). Message deadlines are handed to the bot's callback,
  since only the platform can delete a chat message.
- `Retention.run_due` deletes everything overdue; `RetentionScheduler` runs it at start-up, at each
  deadline (APScheduler 3, asyncio) and as a periodic sweep, so deadlines survive restarts.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from engine.db import Tables
from engine.queue import JobQueue
from engine.vault import Vault

log = logging.getLogger(__name__)

MessageDeleter = Callable[[str, str], Awaitable[bool]]  # (user id, sent message row id) -> deleted


class Retention:
    """Writes deadlines and deletes what is due, over the repositories, the queue and the vault."""

    def __init__(self, tables: Tables, queue: JobQueue, vault: Vault):
        self.tables = tables
        self.queue = queue
        self.vault = vault
        self.on_deleted: Callable[[str], None] | None = None  # told the kind of each artifact deleted

    async def set_deadline(self, user_id: str, kind: str, ref_id: str, due_at: float) -> None:
        await self.tables.deadlines.set(user_id, kind, ref_id, due_at)

    async def clear_deadline(self, kind: str, ref_id: str) -> None:
        await self.tables.deadlines.clear(kind, ref_id)

    async def expire(
        self, kind: str, user_id: str, ref_id: str, delete_message: MessageDeleter | None = None
    ) -> bool:
        """Delete one artifact and its deadline. Returns False when it must be retried later."""
        tables = self.tables
        if kind == "photo":
            self.vault.delete(user_id, ref_id)
            await tables.photos.delete(ref_id)
        elif kind == "adapter":
            self.vault.delete(user_id, ref_id)
            await tables.adapters.delete(ref_id)
        elif kind == "output":
            self.vault.delete(user_id, ref_id)
            await tables.outputs.delete(ref_id)
        elif kind == "job":
            await self.queue.expire(ref_id)
        elif kind == "message":
            if delete_message is None:
                return False
            await delete_message(user_id, ref_id)
            await tables.messages.delete(ref_id)
        await self.clear_deadline(kind, ref_id)
        if self.on_deleted is not None:
            self.on_deleted(kind)
        return True

    async def run_due(self, delete_message: MessageDeleter | None = None) -> dict[str, int]:
        """Delete everything whose deadline has passed; returns counts per kind. One process at a time
        (a shared database): a process that finds another one running skips this round."""
        async with self.tables.db.exclusive("retention") as mine:
            if not mine:
                return {}
            return await self._run_due(delete_message)

    async def _run_due(self, delete_message: MessageDeleter | None) -> dict[str, int]:
        counts: dict[str, int] = {}
        for row in await self.tables.deadlines.due(self.tables.db.clock.now()):
            try:
                done = await self.expire(row["kind"], row["user_id"], row["ref_id"], delete_message)
            except Exception as error:  # one failure (a platform hiccup) must not hold up the rest
                log.warning(
                    "a %s deadline could not be kept yet (%s); retrying later",
                    row["kind"],
                    type(error).__name__,
                )
                continue
            if done:
                counts[row["kind"]] = counts.get(row["kind"], 0) + 1
        if counts:
            await self.tables.audit.add("retention", **counts)
            await self.tables.db.compact()
            log.info("retention deleted %s", counts)
        return counts


class RetentionScheduler:
    """Fires `run_due` at the next deadline and every `sweep_interval`, with APScheduler's asyncio scheduler.

    Only the next deadline is scheduled: after each run it looks again, so new or changed deadlines are
    picked up at once when written in this process (`Database.on_deadline`), else by the sweep.
    """

    def __init__(
        self, retention: Retention, sweep_interval: float, delete_message: MessageDeleter | None = None
    ):
        from apscheduler.schedulers.asyncio import AsyncIOScheduler

        self.retention = retention
        self.db = retention.tables.db
        self.sweep_interval = sweep_interval
        self.delete_message = delete_message
        self.scheduler = AsyncIOScheduler(timezone=UTC)
        self._next: float | None = None

    async def start(self) -> dict[str, int]:
        """Delete what is overdue (before the bot takes updates), then schedule the rest."""
        counts = await self.retention.run_due(self.delete_message)
        self.scheduler.add_job(self._run, "interval", seconds=self.sweep_interval, id="sweep")
        self.scheduler.start()
        self.db.on_deadline = self._deadline_written
        await self.reschedule()
        return counts

    def _deadline_written(self, due_at: float) -> None:
        """A deadline was written in this process: fire earlier if it is the next one."""
        if self.scheduler.running and (self._next is None or due_at < self._next):
            self._schedule(due_at)

    def _schedule(self, due_at: float) -> None:
        self._next = due_at
        when = datetime.fromtimestamp(max(due_at, self.db.clock.now()), tz=UTC)
        self.scheduler.add_job(self._run, "date", run_date=when, id="next-deadline", replace_existing=True)

    async def _run(self) -> None:
        try:
            await self.retention.run_due(self.delete_message)
            await self.reschedule()
        except asyncio.CancelledError:
            return  # the process is stopping: what is due runs at the next start (not an error)
        except Exception:
            log.exception("retention run failed; the sweep will try again")

    async def reschedule(self) -> None:
        due = await self.retention.tables.deadlines.next()
        self._next = None
        if due is not None:
            self._schedule(due)

    def stop(self) -> None:
        self.db.on_deadline = None
        if self.scheduler.running:
            self.scheduler.shutdown(wait=False)
