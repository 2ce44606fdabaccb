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
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from engine.db.base import Database, new_id

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
    eta_seconds: float  # until this one is done, from measured durations where there are any
    estimated: bool = False  # some duration is a prior (engine.estimates), not yet measured here


# Until durations have been measured, ETAs use priors (seconds): the facade passes ones estimated from the
# configured model and device (engine.estimates); these are the fallback. Measured values replace them.
DEFAULT_DURATIONS = {"train": 600.0, "generate": 60.0, "video": 180.0}


class JobQueue:
    def __init__(
        self,
        db: Database,
        lease_seconds: float,
        max_attempts: int,
        backoff_seconds: float = 15.0,
        priors: Mapping[str, float] | None = None,
    ):
        self.db = db
        self.sql = db.sql
        self.lease = lease_seconds
        self.max_attempts = max_attempts
        self.backoff = backoff_seconds
        self.priors = {**DEFAULT_DURATIONS, **(priors or {})}
        self.on_finished: Callable[[str, float], None] | None = None  # told (kind, seconds) of each job done

    async def enqueue(self, user_id: str, kind: str, payload: dict[str, Any] | None = None) -> str:
        job_id = new_id()
        now = self.db.clock.now()
        await self.db.execute(
            self.sql.JOB_INSERT,
            (job_id, user_id, kind, json.dumps(payload or {}), self.max_attempts, now, now),
        )
        await self.db.notify_jobs()
        return job_id

    async def wait_for_work(self, timeout: float) -> None:
        """An idle worker's pause: woken early where the backend can tell that a job was queued."""
        await self.db.wait_for_jobs(timeout)

    async def get(self, job_id: str) -> Job | None:
        row = await self.db.fetchone(self.sql.JOB_GET, (job_id,))
        return Job.from_row(row) if row else None

    async def set_metadata(self, job_id: str, metadata: dict[str, Any]) -> None:
        """What a finished job measured (JSON, no personal data); kept with the job, never logged."""
        await self.db.execute(self.sql.JOB_SET_METADATA, (json.dumps(metadata), job_id))

    async def active_jobs(self, user_id: str) -> list[Job]:
        rows = await self.db.fetchall(self.sql.JOB_ACTIVE_OF_USER, (user_id,))
        return [Job.from_row(row) for row in rows]

    async def claim(self, worker: str, kinds: tuple[str, ...] = ()) -> Job | None:
        """Take the next job (queued, or running with an expired lease) and lease it to `worker`.
        `kinds`: only jobs of these kinds (empty: any kind)."""
        wanted = "," + ",".join(kinds) + "," if kinds else "*"
        while True:
            now = self.db.clock.now()
            async with self.db.transaction():
                row = await self.db.fetchone(self.sql.JOB_NEXT, {"now": now, "kinds": wanted})
                if row is None:
                    return None
                if row["state"] == "running" and row["attempts"] >= row["max_attempts"]:
                    await self.db.execute(
                        self.sql.JOB_FAIL_ABANDONED,
                        ("the worker stopped responding too often", now, row["id"]),
                    )
                    continue
                await self.db.execute(
                    self.sql.JOB_LEASE,
                    (now + self.lease, worker, now, row["id"]),
                )
                return await self.get(row["id"])

    async def heartbeat(self, job: Job, progress: float, stage: str) -> bool:
        """Renew the lease and record progress. False if the job is no longer ours (cancelled or taken)."""
        now = self.db.clock.now()
        changed = await self.db.execute(
            self.sql.JOB_HEARTBEAT,
            (now + self.lease, max(0.0, min(1.0, progress)), stage, job.id, job.attempts),
        )
        return changed > 0

    async def is_current(self, job: Job) -> bool:
        """True while this attempt still owns the job. Call inside the transaction that writes results."""
        row = await self.db.fetchone(self.sql.JOB_IS_CURRENT, (job.id, job.attempts))
        return row is not None

    async def finish(self, job: Job) -> bool:
        now = self.db.clock.now()
        changed = await self.db.execute(self.sql.JOB_FINISH, (now, job.id, job.attempts))
        if changed:
            started = await self.db.fetchone(self.sql.JOB_STARTED_AT, (job.id,))
            seconds = max(0.0, now - started["started_at"])
            await self.db.execute(self.sql.DURATION_INSERT, (job.kind, seconds, now))
            if self.on_finished is not None:
                self.on_finished(job.kind, seconds)
        return changed > 0

    async def fail(self, job: Job, reason: str, retry: bool = True) -> str:
        """Record a failure; requeue with exponential backoff while attempts remain. Returns the new state,
        or "lost" when this attempt no longer owns the job (cancelled or taken over): nothing changed."""
        now = self.db.clock.now()
        state = "queued" if retry and job.attempts < job.max_attempts else "failed"
        delay = self.backoff * (2 ** (job.attempts - 1))
        changed = await self.db.execute(
            self.sql.JOB_FAIL,
            (state, reason, now + delay, state, now, job.id, job.attempts),
        )
        return state if changed else "lost"

    async def release(self, job: Job) -> None:
        """Give a running job back untouched (clean shutdown): it runs again later, not counted as a try."""
        await self.db.execute(self.sql.JOB_RELEASE, (job.id, job.attempts))

    async def cancel(self, job_id: str, user_id: str) -> bool:
        """Cancel one of the user's active jobs (authorised by owner)."""
        changed = await self.db.execute(self.sql.JOB_CANCEL, (self.db.clock.now(), job_id, user_id))
        return changed > 0

    async def cancel_user(self, user_id: str) -> int:
        """Cancel every queued or running job of the user; a running worker notices at its next check."""
        return await self.db.execute(self.sql.JOB_CANCEL_ALL_OF_USER, (self.db.clock.now(), user_id))

    async def expire(self, job_id: str) -> None:
        """A job past its deadline: cancelled if it has not finished."""
        await self.db.execute(self.sql.JOB_EXPIRE, (job_id,))

    async def duration(self, kind: str) -> tuple[float, bool]:
        """`(seconds, measured)`: the mean of the last measured jobs of `kind`, else its prior."""
        row = await self.db.fetchone(self.sql.DURATION_MEAN, (kind,))
        if row and row["mean"] is not None:
            return row["mean"], True
        return self.priors.get(kind, 60.0), False

    async def mean_duration(self, kind: str) -> float:
        return (await self.duration(kind))[0]

    async def position(self, job: Job) -> QueuePosition:
        """How many jobs run before this one, and when it should be done (one worker assumed)."""
        rows = await self.db.fetchall(self.sql.JOB_AHEAD, (job.id,))
        eta, estimated = 0.0, False
        for kind, progress in [*((row["kind"], row["progress"]) for row in rows), (job.kind, job.progress)]:
            seconds, measured = await self.duration(kind)
            eta += (1 - progress) * seconds
            estimated = estimated or not measured
        return QueuePosition(ahead=len(rows), eta_seconds=eta, estimated=estimated)

    async def running_with_progress_message(self, platform: str) -> list[Any]:
        """Running jobs of the platform's users that have a progress message (id, user_id, progress,
        stage, message_id)."""
        return await self.db.fetchall(self.sql.JOB_RUNNING_WITH_PROGRESS_MESSAGE, (platform,))
