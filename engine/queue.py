"""Jobs as rows: enqueue, claim with a lease, heartbeat, finish, fail/retry, cancel.

Rules:
- One running job per user, and a user's jobs run in the order they were queued (so a generation waits
  for that user's training).
- Fair between users: the next job goes to the user served least recently (round robin).
- A lease that is not renewed expires; the next claim takes the job over and bumps `attempts`. Results are
  written only while `attempts` still matches (`is_current`), so a stale worker cannot overwrite a newer
  attempt.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from engine.store import Store, new_id

ACTIVE = ("queued", "running")


@dataclass(frozen=True)
class Job:
    id: str
    user_id: str
    kind: str
    payload: dict[str, Any]
    state: str
    attempts: int
    max_attempts: int
    progress: float
    stage: str
    error: str | None
    created_at: float

    @classmethod
    def from_row(cls, row: Any) -> Job:
        return cls(
            id=row["id"],
            user_id=row["user_id"],
            kind=row["kind"],
            payload=json.loads(row["payload"]),
            state=row["state"],
            attempts=row["attempts"],
            max_attempts=row["max_attempts"],
            progress=row["progress"],
            stage=row["stage"],
            error=row["error"],
            created_at=row["created_at"],
        )


@dataclass(frozen=True)
class QueuePosition:
    ahead: int  # jobs that will run before this one
    eta_seconds: float  # until this one is done, from measured durations


# Until durations have been measured, ETAs use these (seconds); measured values replace them.
DEFAULT_DURATIONS = {"train": 600.0, "generate": 60.0}


class JobQueue:
    def __init__(self, store: Store, lease_seconds: float, max_attempts: int, backoff_seconds: float = 15.0):
        self.store = store
        self.lease = lease_seconds
        self.max_attempts = max_attempts
        self.backoff = backoff_seconds

    async def enqueue(self, user_id: str, kind: str, payload: dict[str, Any] | None = None) -> str:
        job_id = new_id()
        now = self.store.clock.now()
        await self.store.execute(
            "INSERT INTO jobs(id, user_id, kind, payload, state, max_attempts, not_before, created_at) "
            "VALUES (?,?,?,?,'queued',?,?,?)",
            (job_id, user_id, kind, json.dumps(payload or {}), self.max_attempts, now, now),
        )
        return job_id

    async def get(self, job_id: str) -> Job | None:
        row = await self.store.fetchone("SELECT * FROM jobs WHERE id=?", (job_id,))
        return Job.from_row(row) if row else None

    async def active_jobs(self, user_id: str) -> list[Job]:
        rows = await self.store.fetchall(
            "SELECT * FROM jobs WHERE user_id=? AND state IN ('queued','running') ORDER BY rowid", (user_id,)
        )
        return [Job.from_row(row) for row in rows]

    async def claim(self, worker: str) -> Job | None:
        """Take the next job (queued, or running with an expired lease) and lease it to `worker`."""
        while True:
            now = self.store.clock.now()
            async with self.store.transaction():
                row = await self.store.fetchone(
                    """
                    SELECT j.* FROM jobs j
                    WHERE j.rowid = (SELECT MIN(k.rowid) FROM jobs k
                                     WHERE k.user_id = j.user_id AND k.state IN ('queued','running'))
                      AND ((j.state = 'queued' AND j.not_before <= :now)
                           OR (j.state = 'running' AND j.lease_until < :now))
                    ORDER BY (SELECT COALESCE(MAX(s.started_at), 0) FROM jobs s WHERE s.user_id = j.user_id),
                             j.rowid
                    LIMIT 1
                    """,
                    {"now": now},
                )
                if row is None:
                    return None
                if row["state"] == "running" and row["attempts"] >= row["max_attempts"]:
                    await self.store.execute(
                        "UPDATE jobs SET state='failed', error=?, finished_at=?, lease_until=NULL WHERE id=?",
                        ("the worker stopped responding too often", now, row["id"]),
                    )
                    continue
                await self.store.execute(
                    "UPDATE jobs SET state='running', attempts=attempts+1, lease_until=?, worker=?, "
                    "started_at=?, error=NULL WHERE id=?",
                    (now + self.lease, worker, now, row["id"]),
                )
                return await self.get(row["id"])

    async def heartbeat(self, job: Job, progress: float, stage: str) -> bool:
        """Renew the lease and record progress. False if the job is no longer ours (cancelled or taken)."""
        now = self.store.clock.now()
        changed = await self.store.execute(
            "UPDATE jobs SET lease_until=?, progress=?, stage=? WHERE id=? AND state='running' AND attempts=?",
            (now + self.lease, max(0.0, min(1.0, progress)), stage, job.id, job.attempts),
        )
        return changed > 0

    async def is_current(self, job: Job) -> bool:
        """True while this attempt still owns the job. Call inside the transaction that writes results."""
        row = await self.store.fetchone(
            "SELECT 1 FROM jobs WHERE id=? AND state='running' AND attempts=?", (job.id, job.attempts)
        )
        return row is not None

    async def finish(self, job: Job) -> bool:
        now = self.store.clock.now()
        changed = await self.store.execute(
            "UPDATE jobs SET state='done', progress=1, stage='done', finished_at=?, lease_until=NULL "
            "WHERE id=? AND state='running' AND attempts=?",
            (now, job.id, job.attempts),
        )
        if changed:
            started = await self.store.fetchone("SELECT started_at FROM jobs WHERE id=?", (job.id,))
            await self.store.execute(
                "INSERT INTO job_durations(kind, seconds, finished_at) VALUES (?,?,?)",
                (job.kind, max(0.0, now - started["started_at"]), now),
            )
        return changed > 0

    async def fail(self, job: Job, reason: str, retry: bool = True) -> str:
        """Record a failure; requeue with exponential backoff while attempts remain. Returns the new state,
        or "lost" when this attempt no longer owns the job (cancelled or taken over): nothing changed."""
        now = self.store.clock.now()
        state = "queued" if retry and job.attempts < job.max_attempts else "failed"
        delay = self.backoff * (2 ** (job.attempts - 1))
        changed = await self.store.execute(
            "UPDATE jobs SET state=?, error=?, not_before=?, lease_until=NULL, "
            "finished_at=CASE WHEN ?='failed' THEN ? ELSE NULL END "
            "WHERE id=? AND state='running' AND attempts=?",
            (state, reason, now + delay, state, now, job.id, job.attempts),
        )
        return state if changed else "lost"

    async def release(self, job: Job) -> None:
        """Give a running job back untouched (clean shutdown): it runs again later, not counted as a try."""
        await self.store.execute(
            "UPDATE jobs SET state='queued', attempts=attempts-1, lease_until=NULL, worker=NULL "
            "WHERE id=? AND state='running' AND attempts=?",
            (job.id, job.attempts),
        )

    async def cancel(self, job_id: str, user_id: str) -> bool:
        """Cancel one of the user's active jobs (authorised by owner)."""
        changed = await self.store.execute(
            "UPDATE jobs SET state='cancelled', lease_until=NULL, finished_at=? "
            "WHERE id=? AND user_id=? AND state IN ('queued','running')",
            (self.store.clock.now(), job_id, user_id),
        )
        return changed > 0

    async def cancel_user(self, user_id: str) -> int:
        """Cancel every queued or running job of the user; a running worker notices at its next check."""
        return await self.store.execute(
            "UPDATE jobs SET state='cancelled', lease_until=NULL, finished_at=? "
            "WHERE user_id=? AND state IN ('queued','running')",
            (self.store.clock.now(), user_id),
        )

    async def mean_duration(self, kind: str) -> float:
        row = await self.store.fetchone(
            "SELECT AVG(seconds) AS mean FROM (SELECT seconds FROM job_durations WHERE kind=? "
            "ORDER BY finished_at DESC LIMIT 20)",
            (kind,),
        )
        return row["mean"] if row and row["mean"] is not None else DEFAULT_DURATIONS.get(kind, 60.0)

    async def position(self, job: Job) -> QueuePosition:
        """How many jobs run before this one, and when it should be done (one worker assumed)."""
        rows = await self.store.fetchall(
            "SELECT kind, state, progress FROM jobs WHERE state IN ('queued','running') "
            "AND rowid < (SELECT rowid FROM jobs WHERE id=?)",
            (job.id,),
        )
        eta = 0.0
        for row in rows:
            eta += (1 - row["progress"]) * await self.mean_duration(row["kind"])
        eta += (1 - job.progress) * await self.mean_duration(job.kind)
        return QueuePosition(ahead=len(rows), eta_seconds=eta)
