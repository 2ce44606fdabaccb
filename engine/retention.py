"""Deadlines: every personal artifact has a deletion time in the store; this module keeps them.

- `set_deadline` records one when an artifact is created (or its lifetime changes).
- `expire` deletes one artifact (idempotent). Message deadlines are handed to the bot's callback, since only
  the platform can delete a chat message.
- `run_due` deletes everything overdue; `RetentionScheduler` runs it at start-up, at each deadline
  (APScheduler 3, asyncio) and as a periodic sweep, so deadlines survive restarts.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from engine.store import Store, new_id

if TYPE_CHECKING:
    from engine.facade import Engine

log = logging.getLogger(__name__)

# Telegram lets bots delete messages only while they are younger than 48 hours.
MESSAGE_CAPS = {"telegram": 47 * 3600.0}

MessageDeleter = Callable[[str, str], Awaitable[bool]]  # (user id, sent_messages row id) -> deleted


def message_cap(platform: str) -> float:
    return MESSAGE_CAPS.get(platform, float("inf"))


async def set_deadline(store: Store, user_id: str, kind: str, ref_id: str, due_at: float) -> None:
    await store.execute(
        "INSERT INTO deadlines(id, user_id, kind, ref_id, due_at) VALUES (?,?,?,?,?) "
        "ON CONFLICT(kind, ref_id) DO UPDATE SET due_at=excluded.due_at",
        (new_id(), user_id, kind, ref_id, due_at),
    )
    if store.on_deadline is not None:
        store.on_deadline(due_at)


async def clear_deadline(store: Store, kind: str, ref_id: str) -> None:
    await store.execute("DELETE FROM deadlines WHERE kind=? AND ref_id=?", (kind, ref_id))


async def expire(
    engine: Engine, kind: str, user_id: str, ref_id: str, delete_message: MessageDeleter | None = None
) -> bool:
    """Delete one artifact and its deadline. Returns False when it must be retried later."""
    store, vault = engine.store, engine.vault
    if kind == "photo":
        vault.delete(user_id, ref_id)
        await store.execute("DELETE FROM photos WHERE id=?", (ref_id,))
    elif kind == "adapter":
        vault.delete(user_id, ref_id)
        await store.execute("DELETE FROM adapters WHERE id=?", (ref_id,))
    elif kind == "output":
        vault.delete(user_id, ref_id)
        await store.execute("DELETE FROM outputs WHERE id=?", (ref_id,))
    elif kind == "job":
        await store.execute(
            "UPDATE jobs SET state='cancelled', error='expired', lease_until=NULL "
            "WHERE id=? AND state IN ('queued','running')",
            (ref_id,),
        )
    elif kind == "message":
        if delete_message is None:
            return False
        await delete_message(user_id, ref_id)
        await store.execute("DELETE FROM sent_messages WHERE id=?", (ref_id,))
    await clear_deadline(store, kind, ref_id)
    return True


async def run_due(engine: Engine, delete_message: MessageDeleter | None = None) -> dict[str, int]:
    """Delete everything whose deadline has passed; returns counts per kind."""
    now = engine.clock.now()
    rows = await engine.store.fetchall(
        "SELECT user_id, kind, ref_id FROM deadlines WHERE due_at <= ? ORDER BY due_at", (now,)
    )
    counts: dict[str, int] = {}
    for row in rows:
        try:
            done = await expire(engine, row["kind"], row["user_id"], row["ref_id"], delete_message)
        except Exception as error:  # one failure (a platform hiccup) must not hold up the rest
            log.warning(
                "a %s deadline could not be kept yet (%s); retrying later", row["kind"], type(error).__name__
            )
            continue
        if done:
            counts[row["kind"]] = counts.get(row["kind"], 0) + 1
    if counts:
        await engine.store.audit("retention", **counts)
        await engine.store.checkpoint()
        log.info("retention deleted %s", counts)
    return counts


async def next_due(store: Store) -> float | None:
    row = await store.fetchone("SELECT MIN(due_at) AS due FROM deadlines")
    return row["due"] if row else None


class RetentionScheduler:
    """Fires `run_due` at the next deadline and every `sweep_interval`, with APScheduler's asyncio scheduler.

    Only the next deadline is scheduled: after each run it looks again, so new or changed deadlines are
    picked up at once when written in this process (`Store.on_deadline`), else by the sweep.
    """

    def __init__(self, engine: Engine, delete_message: MessageDeleter | None = None):
        from apscheduler.schedulers.asyncio import AsyncIOScheduler

        self.engine = engine
        self.delete_message = delete_message
        self.scheduler = AsyncIOScheduler(timezone=UTC)
        self._next: float | None = None

    async def start(self) -> dict[str, int]:
        """Delete what is overdue (before the bot takes updates), then schedule the rest."""
        counts = await run_due(self.engine, self.delete_message)
        self.scheduler.add_job(
            self._run, "interval", seconds=self.engine.settings.retention.sweep_interval, id="sweep"
        )
        self.scheduler.start()
        self.engine.store.on_deadline = self._deadline_written
        await self.reschedule()
        return counts

    def _deadline_written(self, due_at: float) -> None:
        """A deadline was written in this process: fire earlier if it is the next one."""
        if self.scheduler.running and (self._next is None or due_at < self._next):
            self._schedule(due_at)

    def _schedule(self, due_at: float) -> None:
        self._next = due_at
        when = datetime.fromtimestamp(max(due_at, self.engine.clock.now()), tz=UTC)
        self.scheduler.add_job(self._run, "date", run_date=when, id="next-deadline", replace_existing=True)

    async def _run(self) -> None:
        try:
            await run_due(self.engine, self.delete_message)
        except Exception:
            log.exception("retention run failed; the sweep will try again")
        await self.reschedule()

    async def reschedule(self) -> None:
        due = await next_due(self.engine.store)
        self._next = None
        if due is not None:
            self._schedule(due)

    def stop(self) -> None:
        self.engine.store.on_deadline = None
        if self.scheduler.running:
            self.scheduler.shutdown(wait=False)
