"""Whether new work (a training, a style request or an animated clip) may be queued now, in this order:
blocked → paused → one unfinished style request (still or clip) per user → the user's quota of that kind →
the queue limit.

A refusal creates no job, so it uses no quota unit. When the queue is full the user is told honestly when
to try again, from measured job durations (one worker assumed, like queue positions).
"""

from __future__ import annotations

import math

from engine.access import Access
from engine.db import Tables
from engine.errors import Refused
from engine.operations import Operations
from engine.queue import JobQueue
from engine.quotas import Quotas

STYLE_KINDS = ("generate", "video")  # a style request: still portraits or one animated clip


class Admission:
    def __init__(
        self,
        tables: Tables,
        queue: JobQueue,
        access: Access,
        quotas: Quotas,
        ops: Operations,
        max_queued: int,
    ):
        self.tables = tables
        self.queue = queue
        self.access = access
        self.quotas = quotas
        self.ops = ops
        self.max_queued = max_queued

    async def require(self, user_id: str, kind: str) -> None:
        """Raise `Refused` (blocked, paused, request_pending, quota, busy) unless `kind` may be queued."""
        if await self.access.is_blocked(user_id):
            raise Refused("blocked", ref=self.access.support_ref(user_id))
        if await self.ops.paused():
            raise Refused("paused")
        if kind in STYLE_KINDS and any(
            job.kind in STYLE_KINDS for job in await self.queue.active_jobs(user_id)
        ):
            raise Refused("request_pending")
        await self.quotas.require(user_id, kind)
        queued = await self.tables.usage.queued()
        if queued >= self.max_queued:
            raise Refused("busy", minutes=await self.minutes_until_room(queued))

    async def minutes_until_room(self, queued: int) -> int:
        """When a place in the queue frees up: the running jobs' remaining time plus the queued jobs that
        must start before the queue is below its limit, in whole minutes (at least 1)."""
        must_start = queued - self.max_queued + 1
        seconds = 0.0
        rows = await self.tables.usage.active()
        for row in sorted(rows, key=lambda row: row["state"] != "running"):  # running ones first
            if row["state"] == "queued":
                if must_start <= 1:
                    break
                must_start -= 1
            seconds += (1 - row["progress"]) * await self.queue.mean_duration(row["kind"])
        return max(1, math.ceil(seconds / 60))
