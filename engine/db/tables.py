"""Small repositories, one per table: the only code that names statements about users' rows.

Each takes a `Database` and runs its backend's statements (`db.sql.NAME`); none holds SQL itself, so a
new backend is a new folder of statements, not an edit here.
"""

from __future__ import annotations

import json
from typing import Any

from engine.db.base import USER_TABLES, Database, Row, new_id


class Users:
    def __init__(self, db: Database):
        self.db = db

    async def ensure(self, user_id: str, platform: str, sealed_chat: bytes | None) -> bool:
        """Create the user row if missing (True if created); refresh the delivery address."""
        now = self.db.clock.now()
        created = await self.db.execute(
            self.db.sql.USER_INSERT_IF_NEW, (user_id, platform, sealed_chat, now, now)
        )
        if not created:
            await self.db.execute(self.db.sql.USER_TOUCH, (now, sealed_chat, user_id))
        return created > 0

    async def get(self, user_id: str) -> Row | None:
        return await self.db.fetchone(self.db.sql.USER_GET, (user_id,))

    async def set_model_retention(self, user_id: str, seconds: float) -> None:
        await self.db.execute(self.db.sql.USER_SET_MODEL_RETENTION, (seconds, user_id))

    async def set_message_retention(self, user_id: str, seconds: float) -> None:
        await self.db.execute(self.db.sql.USER_SET_MESSAGE_RETENTION, (seconds, user_id))

    async def languages(self, user_id: str) -> Row | None:
        """(language, platform_language) of the user's row, or None without a row."""
        return await self.db.fetchone(self.db.sql.USER_LANGUAGES, (user_id,))

    async def set_language(self, user_id: str, language: str | None) -> None:
        await self.db.execute(self.db.sql.USER_SET_LANGUAGE, (language, user_id))

    async def set_platform_language(self, user_id: str, language: str | None) -> None:
        await self.db.execute(self.db.sql.USER_SET_PLATFORM_LANGUAGE, (language, user_id))

    async def erase(self, user_id: str) -> dict[str, int]:
        """Delete every row of one user in one transaction; returns counts per table."""
        counts: dict[str, int] = {}
        async with self.db.transaction():
            await self.db.fetchall(
                self.db.sql.USER_ERASE_LOCK, (user_id,)
            )  # results being written finish first
            for table in USER_TABLES:
                counts[table] = await self.db.execute(self.db.sql.USER_ERASE[table], (user_id,))
        await self.db.compact()
        return counts

    async def ids(self) -> list[str]:
        """Every known user's pseudonym (with a user row or an admission), for matching support refs."""
        rows = await self.db.fetchall(self.db.sql.USER_IDS) + await self.db.fetchall(
            self.db.sql.ADMISSION_IDS
        )
        return sorted({row["id"] for row in rows})

    async def export(self, user_id: str) -> dict[str, list[dict[str, Any]]]:
        """Every stored row about the user, table by table (no sealed values)."""
        return {
            table: [dict(row) for row in await self.db.fetchall(statement, (user_id,))]
            for table, statement in self.db.sql.EXPORT.items()
        }


class Consents:
    def __init__(self, db: Database):
        self.db = db

    async def current(self, user_id: str) -> Row | None:
        return await self.db.fetchone(self.db.sql.CONSENT_CURRENT, (user_id,))

    async def give(self, user_id: str, policy_version: str, language: str, attested: str) -> None:
        """Withdraw any earlier consent and record this one (to the policy text in `language`), together."""
        now = self.db.clock.now()
        async with self.db.transaction():
            await self.db.execute(self.db.sql.CONSENT_WITHDRAW_ALL, (now, user_id))
            await self.db.execute(
                self.db.sql.CONSENT_INSERT, (new_id(), user_id, policy_version, language, attested, now)
            )


class Photos:
    def __init__(self, db: Database):
        self.db = db

    async def count(self, user_id: str) -> int:
        return (await self.db.fetchone(self.db.sql.PHOTO_COUNT, (user_id,)))["n"]

    async def fingerprints(self, user_id: str) -> list[Row]:
        return await self.db.fetchall(self.db.sql.PHOTO_FINGERPRINTS, (user_id,))

    async def ids(self, user_id: str) -> list[str]:
        return [row["id"] for row in await self.db.fetchall(self.db.sql.PHOTO_IDS, (user_id,))]

    async def add(
        self, photo_id: str, user_id: str, sealed_fingerprint: bytes, width: int, height: int
    ) -> None:
        await self.db.execute(
            self.db.sql.PHOTO_INSERT,
            (photo_id, user_id, sealed_fingerprint, width, height, self.db.clock.now()),
        )

    async def delete(self, photo_id: str) -> None:
        await self.db.execute(self.db.sql.PHOTO_DELETE, (photo_id,))


class Adapters:
    def __init__(self, db: Database):
        self.db = db

    async def latest(self, user_id: str) -> Row | None:
        return await self.db.fetchone(self.db.sql.ADAPTER_LATEST, (user_id,))

    async def ids(self, user_id: str) -> list[str]:
        return [row["id"] for row in await self.db.fetchall(self.db.sql.ADAPTER_IDS, (user_id,))]

    async def add(
        self,
        adapter_id: str,
        user_id: str,
        token: str,
        losses: list[float],
        sealed_signature: bytes | None = None,
    ) -> None:
        now = self.db.clock.now()
        losses_json = json.dumps([round(x, 5) for x in losses])
        await self.db.execute(
            self.db.sql.ADAPTER_INSERT,
            (adapter_id, user_id, token, losses_json, sealed_signature, now, now),
        )

    async def touch(self, adapter_id: str, at: float) -> None:
        await self.db.execute(self.db.sql.ADAPTER_TOUCH, (at, adapter_id))

    async def delete(self, adapter_id: str) -> None:
        await self.db.execute(self.db.sql.ADAPTER_DELETE, (adapter_id,))


class Outputs:
    def __init__(self, db: Database):
        self.db = db

    async def add(
        self,
        output_id: str,
        user_id: str,
        job_id: str,
        preset: str,
        position: int,
        faces: int | None = None,
        likeness: int | None = None,
        below_minimum: bool = False,
    ) -> None:
        await self.db.execute(
            self.db.sql.OUTPUT_INSERT,
            (
                output_id,
                user_id,
                job_id,
                preset,
                position,
                faces,
                likeness,
                int(below_minimum),
                self.db.clock.now(),
            ),
        )

    async def ids_of_job(self, job_id: str) -> list[str]:
        return [row["id"] for row in await self.db.fetchall(self.db.sql.OUTPUT_IDS_OF_JOB, (job_id,))]

    async def scores_of_job(self, job_id: str) -> list[Row]:
        """Each portrait's id, faces found, likeness (0-100 or None) and whether it is under the minimum."""
        return await self.db.fetchall(self.db.sql.OUTPUT_SCORES_OF_JOB, (job_id,))

    async def count(self, user_id: str) -> int:
        return (await self.db.fetchone(self.db.sql.OUTPUT_COUNT, (user_id,)))["n"]

    async def delete(self, output_id: str) -> None:
        await self.db.execute(self.db.sql.OUTPUT_DELETE, (output_id,))


class Deliveries:
    """The outbox: one row per finished job whose outcome the user must be sent."""

    def __init__(self, db: Database):
        self.db = db

    async def add(self, user_id: str, job_id: str, kind: str) -> None:
        """Idempotent: a job has at most one delivery."""
        await self.db.execute(
            self.db.sql.DELIVERY_ADD, (new_id(), user_id, job_id, kind, self.db.clock.now())
        )

    async def pending(self, platform: str) -> list[Row]:
        return await self.db.fetchall(self.db.sql.DELIVERY_PENDING, (platform, self.db.clock.now()))

    async def retry_all_now(self) -> None:
        await self.db.execute(self.db.sql.DELIVERY_RETRY_ALL_NOW)

    async def attempts(self, delivery_id: str) -> int | None:
        row = await self.db.fetchone(self.db.sql.DELIVERY_ATTEMPTS, (delivery_id,))
        return row["attempts"] if row else None

    async def back_off(self, delivery_id: str, attempts: int, state: str, not_before: float) -> None:
        await self.db.execute(self.db.sql.DELIVERY_BACK_OFF, (attempts, state, not_before, delivery_id))

    async def mark_sent(self, delivery_id: str) -> None:
        await self.db.execute(self.db.sql.DELIVERY_SENT, (self.db.clock.now(), delivery_id))

    async def mark_part_sent(self, delivery_id: str, parts: int) -> bool:
        """The first `parts` parts were accepted by the platform; False if already recorded (or over)."""
        return await self.db.execute(self.db.sql.DELIVERY_PART_SENT, (parts, delivery_id, parts)) > 0


class Messages:
    """Messages the bot sent to a user, kept so they can be edited (progress) and deleted."""

    def __init__(self, db: Database):
        self.db = db

    async def add(self, user_id: str, message_id: str, kind: str, job_id: str | None = None) -> str:
        row_id = new_id()
        await self.db.execute(
            self.db.sql.MESSAGE_INSERT, (row_id, user_id, message_id, job_id, kind, self.db.clock.now())
        )
        return row_id

    async def progress_of_job(self, job_id: str) -> str | None:
        row = await self.db.fetchone(self.db.sql.MESSAGE_PROGRESS_OF_JOB, (job_id,))
        return row["message_id"] if row else None

    async def ids_of_user(self, user_id: str) -> list[str]:
        return [
            row["message_id"] for row in await self.db.fetchall(self.db.sql.MESSAGE_IDS_OF_USER, (user_id,))
        ]

    async def results_of_user(self, user_id: str) -> list[Row]:
        return await self.db.fetchall(self.db.sql.MESSAGE_RESULTS_OF_USER, (user_id,))

    async def target(self, user_id: str, row_id: str) -> Row | None:
        return await self.db.fetchone(self.db.sql.MESSAGE_TARGET, (row_id, user_id))

    async def delete(self, row_id: str) -> None:
        await self.db.execute(self.db.sql.MESSAGE_DELETE, (row_id,))


class Deadlines:
    def __init__(self, db: Database):
        self.db = db

    async def set(self, user_id: str, kind: str, ref_id: str, due_at: float) -> None:
        await self.db.execute(self.db.sql.DEADLINE_SET, (new_id(), user_id, kind, ref_id, due_at))
        if self.db.on_deadline is not None:
            self.db.on_deadline(due_at)

    async def clear(self, kind: str, ref_id: str) -> None:
        await self.db.execute(self.db.sql.DEADLINE_CLEAR, (kind, ref_id))

    async def due(self, now: float) -> list[Row]:
        return await self.db.fetchall(self.db.sql.DEADLINE_DUE, (now,))

    async def next(self) -> float | None:
        row = await self.db.fetchone(self.db.sql.DEADLINE_NEXT)
        return row["due"] if row else None

    async def first_of_user(self, user_id: str, kind: str) -> float | None:
        row = await self.db.fetchone(self.db.sql.DEADLINE_FIRST_OF_USER, (user_id, kind))
        return row["due"] if row else None


class Audit:
    """What happened, never to whom: callers pass counts and kinds only. Operator actions also name the
    operator (`actor`, a pseudonym)."""

    def __init__(self, db: Database):
        self.db = db

    async def add(self, action: str, actor: str | None = None, **detail: Any) -> None:
        await self.db.execute(
            self.db.sql.AUDIT_INSERT,
            (self.db.clock.now(), action, json.dumps(detail, sort_keys=True), actor),
        )

    async def operator_actions(self, limit: int) -> list[Row]:
        return await self.db.fetchall(self.db.sql.AUDIT_OPERATOR_ACTIONS, (limit,))


class Usage:
    """Units of work in use, read from the jobs: the basis of quotas and of the queue limit."""

    def __init__(self, db: Database):
        self.db = db

    async def since(self, user_id: str, kind: str, since: float) -> list[float]:
        """Creation times of the user's counted jobs of `kind` created after `since`, oldest first."""
        rows = await self.db.fetchall(self.db.sql.USAGE_SINCE, (user_id, kind, since))
        return [row["created_at"] for row in rows]

    async def queued(self) -> int:
        return (await self.db.fetchone(self.db.sql.USAGE_QUEUED))["n"]

    async def active(self) -> list[Row]:
        """Every queued or running job (kind, state, progress), in queue order."""
        return await self.db.fetchall(self.db.sql.USAGE_ACTIVE)


class Admissions:
    """Users let in by an invite code. The row names no code, so a code never reveals who used it."""

    def __init__(self, db: Database):
        self.db = db

    async def has(self, user_id: str) -> bool:
        return await self.db.fetchone(self.db.sql.ADMISSION_GET, (user_id,)) is not None

    async def add(self, user_id: str) -> None:
        await self.db.execute(self.db.sql.ADMISSION_ADD, (user_id, self.db.clock.now()))


class Invites:
    """Invite codes, stored only as keyed hashes, with uses left and an expiry."""

    def __init__(self, db: Database):
        self.db = db

    async def add(self, code_hash: str, uses: int, expires_at: float) -> None:
        now = self.db.clock.now()
        await self.db.execute(self.db.sql.INVITE_INSERT, (new_id(), code_hash, uses, expires_at, now))

    async def use(self, code_hash: str) -> bool:
        """Take one use of a valid code (atomically); False if unknown, used up or expired."""
        return await self.db.execute(self.db.sql.INVITE_USE, (code_hash, self.db.clock.now())) > 0

    async def prune(self) -> int:
        """Forget codes that are used up or expired."""
        return await self.db.execute(self.db.sql.INVITE_PRUNE, (self.db.clock.now(),))


class Blocks:
    """Blocked support references. Keyed by the reference, so a block outlives the user's /forget."""

    def __init__(self, db: Database):
        self.db = db

    async def add(self, ref: str) -> bool:
        return await self.db.execute(self.db.sql.BLOCK_ADD, (ref, self.db.clock.now())) > 0

    async def remove(self, ref: str) -> bool:
        return await self.db.execute(self.db.sql.BLOCK_REMOVE, (ref,)) > 0

    async def has(self, ref: str) -> bool:
        return await self.db.fetchone(self.db.sql.BLOCK_GET, (ref,)) is not None


class Flags:
    """Operator switches that every process sees (e.g. `paused`)."""

    def __init__(self, db: Database):
        self.db = db

    async def get(self, name: str) -> str | None:
        row = await self.db.fetchone(self.db.sql.FLAG_GET, (name,))
        return row["value"] if row else None

    async def set(self, name: str, value: str) -> None:
        await self.db.execute(self.db.sql.FLAG_SET, (name, value, self.db.clock.now()))


class Stats:
    """Aggregate numbers for operators and metrics; nothing here names a user."""

    def __init__(self, db: Database):
        self.db = db

    async def _count(self, statement: str, params: tuple[Any, ...] = ()) -> int:
        return (await self.db.fetchone(statement, params))["n"]

    async def consented_users(self) -> int:
        return await self._count(self.db.sql.STATS_CONSENTED)

    async def models(self) -> int:
        return await self._count(self.db.sql.STATS_MODELS)

    async def jobs_by_state(self) -> dict[tuple[str, str], int]:
        """(kind, state) -> count, for queued and running jobs."""
        rows = await self.db.fetchall(self.db.sql.STATS_JOBS_BY_STATE)
        return {(row["kind"], row["state"]): row["n"] for row in rows}

    async def failed_since(self, since: float) -> int:
        return await self._count(self.db.sql.STATS_FAILED_SINCE, (since,))

    async def durations(self, kind: str) -> list[float]:
        """The latest measured durations of a job kind (seconds)."""
        return [row["seconds"] for row in await self.db.fetchall(self.db.sql.STATS_DURATIONS, (kind,))]

    async def deliveries_pending(self) -> int:
        return await self._count(self.db.sql.STATS_DELIVERIES_PENDING)

    async def deadlines_overdue(self, now: float) -> int:
        return await self._count(self.db.sql.STATS_DEADLINES_OVERDUE, (now,))

    async def ping(self) -> bool:
        row = await self.db.fetchone(self.db.sql.STATS_PING)
        return bool(row and row["ok"] == 1)


class Tables:
    """Every repository over one database."""

    def __init__(self, db: Database):
        self.db = db
        self.users = Users(db)
        self.consents = Consents(db)
        self.photos = Photos(db)
        self.adapters = Adapters(db)
        self.outputs = Outputs(db)
        self.deliveries = Deliveries(db)
        self.messages = Messages(db)
        self.deadlines = Deadlines(db)
        self.audit = Audit(db)
        self.usage = Usage(db)
        self.admissions = Admissions(db)
        self.invites = Invites(db)
        self.blocks = Blocks(db)
        self.flags = Flags(db)
        self.stats = Stats(db)
