"""The engine's front door: the only way the bot reads or writes personal data.

Everything here takes a pseudonymous user id (`Engine.pseudonym`), never a platform id. Photos, adapters,
portraits and delivery addresses are sealed by the vault; rows carry deadlines (see `retention`).
This module never imports torch: the bot can use it without loading the model.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import math
import zipfile
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from typing import Any

from engine.access import Access, Invite
from engine.admission import STYLE_KINDS, Admission
from engine.clock import Clock
from engine.db import Database, Tables, new_id, open_database
from engine.errors import Refused, storage_refusal
from engine.estimates import prior_seconds
from engine.export import readable
from engine.flood import FloodControl, Verdict
from engine.intake import Accepted, Fingerprint, IntakeLimits, Rejected, check_reported_size, process_photo
from engine.likeness import Signature
from engine.metrics import Metrics
from engine.operations import LogEntry, Operations, Overview
from engine.presets import Preset, load_presets
from engine.queue import Job, JobQueue, QueuePosition
from engine.quotas import Allowance, Quotas
from engine.retention import MessageDeleter, Retention
from engine.settings import Settings, format_duration
from engine.vault import Pseudonymizer, Vault, load_or_create_master_key, open_vault

# What callers outside the engine may use of the engine's types: they come from here.
__all__ = [
    "Accepted",
    "Allowance",
    "BlockOutcome",
    "Delivery",
    "Engine",
    "Invite",
    "Job",
    "LogEntry",
    "MessageTarget",
    "Overview",
    "PhotoResult",
    "PortraitScore",
    "Preset",
    "QueuePosition",
    "Receipt",
    "Refused",
    "Rejected",
    "RunningJob",
    "UserStatus",
    "Verdict",
]

log = logging.getLogger(__name__)

# What /mydata says about the signature: in words, never its numbers.
SIGNATURE_DESCRIPTION = (
    "A face signature is kept with your personal model: the average of the face measurements taken from "
    "the photos you sent (a list of numbers describing your face, not a picture). It is used only to pick "
    "the portraits that look most like you and to tell you how alike they are. It is encrypted with your "
    "own key and deleted together with your model, or at once with /forget. Its numbers are not shown "
    "here on purpose."
)

RESULT_KINDS = ("portraits", "video")  # deliveries that carry outputs (still images, or one MP4 clip)
MAX_DELIVERY_ATTEMPTS = 40  # with exponential backoff capped at 1 h: about a day of tries
MAX_INVITE_USES = 1000
MAX_INVITE_VALIDITY = 365 * 86400.0
# Outcome of `/ops block` and `/ops unblock`: done, nothing to change, no such reference, malformed.
BlockOutcome = str  # "blocked" | "unblocked" | "unchanged" | "unknown" | "invalid"


@dataclass
class _UserLock:
    """One user's lock and how many tasks hold or await it."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0


@dataclass(frozen=True)
class PhotoResult:
    outcome: Accepted | Rejected
    count: int  # photos stored for the user after this one


@dataclass(frozen=True)
class Delivery:
    """One outbox entry: what to send to whom. `chat` is the sealed address, opened."""

    id: str
    user_id: str
    job_id: str
    kind: str  # trained | portraits | video | failed
    chat: dict[str, Any]
    preset: str | None = None
    images: list[tuple[str, bytes]] = field(default_factory=list)  # (output id, encoded image or MP4)
    error: str | None = None
    scores: list[PortraitScore] = field(default_factory=list)  # one per image, same order
    parts_sent: int = 0  # parts (platform sends) already accepted: a restart skips them


@dataclass(frozen=True)
class PortraitScore:
    """How one delivered portrait was judged: faces found (None: not scored), 0-100 likeness (None: no
    face, or no signature to compare with) and whether it is under the operator's minimum likeness."""

    faces: int | None
    likeness: int | None
    below_minimum: bool


@dataclass(frozen=True)
class RunningJob:
    """A running job with a progress message to keep up to date."""

    job_id: str
    user_id: str
    progress: float
    stage: str
    message_id: str


@dataclass(frozen=True)
class MessageTarget:
    """Where a message the bot sent lives, so it can be deleted."""

    platform: str
    chat: dict[str, Any]
    message_id: str


@dataclass(frozen=True)
class Receipt:
    receipt_id: str
    at: float
    counts: dict[str, int]


@dataclass(frozen=True)
class LanguagePreference:
    """The user's language as stored with their row: their own choice, and what the platform reported."""

    chosen: str | None = None
    reported: str | None = None
    known: bool = False  # the user has a row (the reported language is stored only then)


@dataclass(frozen=True)
class UserStatus:
    consented: bool
    photos: int
    photo_deadline: float | None
    has_model: bool
    model_deadline: float | None
    outputs: int
    output_deadline: float | None
    jobs: list[tuple[Job, QueuePosition]]
    model_retention: float
    message_retention: float
    allowances: list[Allowance] = field(default_factory=list)  # quotas with a limit
    support_ref: str = ""  # what the user quotes to an operator; reveals nothing else


class Engine:
    """Consent log, photo intake, jobs, status, export and forget, over the vault and the repositories.

    The worker records its results through `record_adapter`, `record_portraits` and `record_failure`,
    which write rows, deadlines and the outbox entry together with the end of the job.
    """

    def __init__(self, settings: Settings, store: Database, vault: Vault, presets: dict[str, Preset]):
        self.store = store  # the database connection (tests read it directly)
        self.tables = Tables(store)
        self.vault = vault
        video_off = settings.engine.motion_adapter == "off"  # no motion adapter: no video presets offered
        self.presets = {key: p for key, p in presets.items() if not (video_off and p.video)}
        self.pseudonyms = Pseudonymizer(vault)
        self.metrics = Metrics()
        self.access = Access(settings.access, self.tables, self.pseudonyms)
        # Platform ids are held only as pseudonyms once read (in `access`).
        self.settings = replace(settings, access=replace(settings.access, allow="", operators=""))
        priors = {kind: prior_seconds(kind, settings.engine) for kind in ("train", "generate", "video")}
        self.queue = JobQueue(store, settings.engine.lease, settings.engine.max_attempts, priors=priors)
        self.queue.on_finished = lambda kind, seconds: self.metrics.job_seconds.labels(kind).observe(seconds)
        self.retention = Retention(self.tables, self.queue, vault)
        self.retention.on_deleted = lambda kind: self.metrics.deletions.labels(kind).inc()
        self.ops = Operations(self.tables, vault, self.access.support_ref)
        self.quotas = Quotas(settings.quota, self.tables, video=any(p.video for p in self.presets.values()))
        self.admission = Admission(
            self.tables, self.queue, self.access, self.quotas, self.ops, settings.engine.max_queued
        )
        self.flood = FloodControl(settings.access.flood_per_minute, settings.access.flood_burst, store.clock)
        self.limits = IntakeLimits(
            max_bytes=settings.upload.max_mb * 1024 * 1024,
            max_pixels=settings.upload.max_pixels,
            min_side=settings.upload.min_side,
        )
        self._user_locks: dict[str, _UserLock] = {}
        # platform -> how long it lets a bot delete its messages; registered by the front-ends
        self.message_caps: dict[str, float] = {}

    @classmethod
    async def open(cls, settings: Settings, clock: Clock | None = None) -> Engine:
        data_dir = settings.data_dir
        master = load_or_create_master_key(settings.master_key, data_dir)
        vault = open_vault(settings, master)
        try:
            store = await open_database(settings, clock)
        except BaseException:
            vault.close()
            raise
        return cls(settings, store, vault, load_presets(settings.engine.presets_path))

    async def close(self) -> None:
        await self.store.close()
        self.vault.close()

    @property
    def clock(self) -> Clock:
        return self.store.clock

    def cap_messages(self, platform: str, seconds: float) -> None:
        """A platform's limit on deleting sent messages (Telegram: 48 h): message deadlines stay within it."""
        self.message_caps[platform] = seconds

    async def is_known(self, user_id: str) -> bool:
        """True if anything of the user is stored (a user row exists)."""
        return await self.tables.users.get(user_id) is not None

    def pseudonym(self, platform: str, platform_user_id: str | int) -> str:
        return self.pseudonyms.user(platform, platform_user_id)

    @asynccontextmanager
    async def user_lock(self, user_id: str) -> AsyncIterator[None]:
        """Serialises one user's uploads, consent and erasure inside this process. The lock is forgotten
        once no task holds or awaits it (forgetting it earlier would let a newcomer run beside a waiter)."""
        entry = self._user_locks.setdefault(user_id, _UserLock())
        entry.users += 1
        try:
            async with entry.lock:
                yield
        finally:
            entry.users -= 1
            if entry.users == 0:
                del self._user_locks[user_id]

    # -- users and consent ----------------------------------------------------------------------------
    async def touch_user(self, user_id: str, platform: str, chat: dict[str, Any] | None = None) -> None:
        """Make sure the user row exists; store the (sealed) delivery address when given."""
        sealed = self.vault.seal(user_id, "chat", user_id, json.dumps(chat).encode()) if chat else None
        await self.tables.users.ensure(user_id, platform, sealed)

    async def chat_of(self, user_id: str) -> dict[str, Any] | None:
        row = await self.tables.users.get(user_id)
        if not row or row["chat"] is None:
            return None
        return json.loads(self.vault.open(user_id, "chat", user_id, row["chat"]))

    async def consent(self, user_id: str) -> dict[str, Any] | None:
        row = await self.tables.consents.current(user_id)
        return dict(row) if row else None

    async def has_consent(self, user_id: str, policy_versions: Mapping[str, str]) -> bool:
        """True if the user's consent is to the current policy of the language they read it in.

        `policy_versions`: the current version per language; a change in one language asks only those who
        agreed to that language's text to consent again."""
        current = await self.consent(user_id)
        return bool(current and current["policy_version"] == policy_versions.get(current["language"]))

    async def language_preference(self, user_id: str) -> LanguagePreference:
        row = await self.tables.users.languages(user_id)
        if row is None:
            return LanguagePreference()
        return LanguagePreference(row["language"], row["platform_language"], known=True)

    async def choose_language(self, user_id: str, platform: str, language: str) -> None:
        """The user's own choice (/language); kept with their row until /forget."""
        await self.touch_user(user_id, platform)
        await self.tables.users.set_language(user_id, language)

    async def report_language(self, user_id: str, language: str) -> None:
        """The language the platform reports for a known user (for messages sent without an event)."""
        await self.tables.users.set_platform_language(user_id, language)

    async def give_consent(
        self,
        user_id: str,
        platform: str,
        chat: dict[str, Any],
        policy_version: str,
        attested: str,
        language: str = "en",
    ) -> None:
        """Record consent to `policy_version` of the policy in `language`, with what was attested.
        Under the user's lock: an erasure of the same user (/forget) waits for it, never splits it."""
        async with self.user_lock(user_id):
            await self.touch_user(user_id, platform, chat)
            await self.tables.consents.give(user_id, policy_version, language, attested)
            await self.tables.audit.add("consent_given", policy_version=policy_version, language=language)

    # -- photos ---------------------------------------------------------------------------------------
    def check_size(self, size: int | None) -> Rejected | None:
        rejected = check_reported_size(size, self.limits)
        if rejected is not None:
            self.metrics.photos.labels(rejected.code).inc()
        return rejected

    async def check_upload_allowed(self, user_id: str) -> None:
        """Before any photo is downloaded: photos are only for training, so a blocked user or one with no
        training left is refused here (`Refused`), and nothing is downloaded."""
        with self._counting_refusals():
            if await self.access.is_blocked(user_id):
                raise Refused("blocked", ref=self.access.support_ref(user_id))
            await self.quotas.require(user_id, "train")

    async def photo_count(self, user_id: str) -> int:
        return await self.tables.photos.count(user_id)

    async def add_photo(self, user_id: str, data: bytes) -> PhotoResult:
        """Check one photo and, if accepted, store its sealed face crop with a deadline."""
        async with self.user_lock(user_id):
            if await self.tables.users.get(user_id) is None:  # erased (/forget) since consent was checked
                return PhotoResult(Rejected("erased", {}), 0)
            count = await self.photo_count(user_id)
            if count >= self.settings.upload.max_photos:
                return PhotoResult(
                    Rejected("too_many_photos", {"max": self.settings.upload.max_photos}), count
                )
            previous = [
                Fingerprint.from_bytes(self.vault.open(user_id, "fingerprint", row["id"], row["fingerprint"]))
                for row in await self.tables.photos.fingerprints(user_id)
            ]
            outcome = await asyncio.to_thread(process_photo, data, self.limits, previous)
            self.metrics.photos.labels(outcome.code if isinstance(outcome, Rejected) else "accepted").inc()
            if isinstance(outcome, Rejected):
                return PhotoResult(outcome, count)
            try:
                await self._store_photo(user_id, outcome)
            except Refused as refusal:  # disk full or database locked: nothing of the photo stays
                log.warning("a photo was not stored: %s", refusal.reason)
                return PhotoResult(Rejected(refusal.reason, {}), count)
            return PhotoResult(outcome, count + 1)

    async def _store_photo(self, user_id: str, outcome: Accepted) -> None:
        """Blob, then row and deadline in one transaction; on a storage fault the blob is removed
        again and `Refused` (storage_full, busy) raised."""
        photo_id = new_id()
        async with self._blobs_or_nothing(user_id) as written:
            written.append(photo_id)  # before the write: a failure after the rename leaves it
            await asyncio.to_thread(self.vault.put, user_id, "photo", photo_id, outcome.image)
            sealed = self.vault.seal(user_id, "fingerprint", photo_id, outcome.fingerprint.to_bytes())
            async with self.store.transaction():
                await self.tables.photos.add(photo_id, user_id, sealed, outcome.width, outcome.height)
                await self.retention.set_deadline(
                    user_id, "photo", photo_id, self.clock.now() + self.settings.retention.photos
                )

    @asynccontextmanager
    async def _blobs_or_nothing(self, user_id: str) -> AsyncIterator[list[str]]:
        """Yields a list to append each written blob id to. If the block fails, those blobs are
        deleted (no orphan ciphertext, no half-written file) and a storage fault becomes `Refused`."""
        written: list[str] = []
        try:
            yield written
        except Exception as error:
            for blob_id in written:
                self.vault.delete(user_id, blob_id)
            refusal = storage_refusal(error)
            if refusal is None:
                raise
            raise refusal from error

    async def photos(self, user_id: str) -> list[tuple[str, bytes]]:
        """The user's stored photos (decrypted, in memory), oldest first."""
        return [
            (photo_id, self.vault.get(user_id, "photo", photo_id))
            for photo_id in await self.tables.photos.ids(user_id)
        ]

    # -- jobs -----------------------------------------------------------------------------------------
    async def adapter(self, user_id: str) -> Any | None:
        """The user's current model row (id, token, ...), or None."""
        return await self.tables.adapters.latest(user_id)

    async def adapter_weights(self, user_id: str, adapter_id: str) -> bytes:
        """The user's LoRA bytes (decrypted, in memory)."""
        return await asyncio.to_thread(self.vault.get, user_id, "adapter", adapter_id)

    async def has_model(self, user_id: str) -> bool:
        return await self.adapter(user_id) is not None

    async def active_training(self, user_id: str) -> bool:
        """True while a training job of the user is queued or running."""
        return any(job.kind == "train" for job in await self.queue.active_jobs(user_id))

    async def start_training(self, user_id: str) -> str:
        """Queue a training job (one at a time); returns its id. Raises `Refused`."""
        count = await self.photo_count(user_id)
        if count < self.settings.upload.min_photos:
            raise Refused("not_enough_photos", min_photos=self.settings.upload.min_photos, count=count)
        if await self.active_training(user_id):
            raise Refused("already_training", min_photos=self.settings.upload.min_photos, count=count)
        with self._counting_refusals():
            await self.admission.require(user_id, "train")
        return await self._enqueue(user_id, "train", {})

    async def request_portraits(self, user_id: str, preset_key: str) -> str:
        """Queue a generation job for a known preset; raises `Refused` (no_model, unknown_style, and the
        admission reasons: blocked, paused, request_pending, quota, busy). A video preset queues one
        animated clip (job kind `video`, counted by the video quota only) instead of still portraits."""
        if preset_key not in self.presets:
            raise Refused("unknown_style")
        if not await self.has_model(user_id) and not await self.active_training(user_id):
            raise Refused("no_model")
        kind = "video" if self.presets[preset_key].video else "generate"  # each with its own quota
        with self._counting_refusals():
            await self.admission.require(user_id, kind)
        if kind == "video":
            return await self._enqueue(user_id, "video", {"preset": preset_key})
        payload = {"preset": preset_key, "count": self.settings.engine.images_per_request}
        return await self._enqueue(user_id, "generate", payload)

    async def unanswered_request(self, user_id: str) -> tuple[str, str] | None:
        """The user's queued or running style request whose answer was never sent (the bot stopped between
        queueing it and sending its progress message), as (job id, preset key); None when there is none.
        A press handled again after a restart answers with it instead of "still being made"."""
        for job in await self.queue.active_jobs(user_id):
            if job.kind in STYLE_KINDS and await self.progress_message(job.id) is None:
                return job.id, job.payload["preset"]
        return None

    async def _enqueue(self, user_id: str, kind: str, payload: dict[str, Any]) -> str:
        """Queue a job with its deadline; a locked database or a full disk is `Refused`."""
        async with self._blobs_or_nothing(user_id), self.store.transaction():
            job_id = await self.queue.enqueue(user_id, kind, payload)
            await self.retention.set_deadline(
                user_id, "job", job_id, self.clock.now() + self.settings.retention.jobs
            )
        return job_id

    async def job(self, user_id: str, job_id: str) -> Job | None:
        """The job if it belongs to this user (authorisation by owner), else None."""
        job = await self.queue.get(job_id)
        return job if job and job.user_id == user_id else None

    async def job_position(self, user_id: str, job_id: str) -> QueuePosition | None:
        """How many jobs run before the user's job, and its ETA; None if it is not the user's."""
        job = await self.job(user_id, job_id)
        return await self.queue.position(job) if job else None

    async def cancel_job(self, user_id: str, job_id: str) -> bool:
        """Cancel one of the user's active jobs (its quota unit comes back); False if it is not theirs or
        already over."""
        job = await self.job(user_id, job_id)
        cancelled = await self.queue.cancel(job_id, user_id)
        if cancelled and job is not None:
            self.metrics.jobs.labels(job.kind, "cancelled").inc()
        return cancelled

    async def cancel_jobs(self, user_id: str) -> int:
        return await self.queue.cancel_user(user_id)

    async def running_progress(self, platform: str) -> list[RunningJob]:
        """Running jobs of the platform's users that have a progress message to update."""
        rows = await self.queue.running_with_progress_message(platform)
        return [
            RunningJob(row["id"], row["user_id"], row["progress"], row["stage"], row["message_id"])
            for row in rows
        ]

    # -- results, written by the worker ---------------------------------------------------------------
    async def record_adapter(
        self, job: Job, weights: bytes, losses: list[float], token: str, photo_ids: list[str]
    ) -> bool:
        """Store a trained model and finish the job, if this attempt still owns it. The previous model and
        the photos trained on are deleted afterwards (photos are kept only until training succeeds).
        The model keeps the user's face signature (the mean of the photos' face descriptors, sealed), so
        it lives and dies with the model. Returns False (and stores nothing) when the job was lost."""
        user_id = job.user_id
        adapter_id = new_id()
        async with self._blobs_or_nothing(user_id) as written:
            written.append(adapter_id)  # before the write: a failure after the rename leaves it
            await asyncio.to_thread(self.vault.put, user_id, "adapter", adapter_id, weights)
            signature = await self._signature_of_photos(user_id, photo_ids)
            sealed = (
                self.vault.seal(user_id, "signature", adapter_id, signature.to_bytes()) if signature else None
            )
            keep = await self.model_retention(user_id)
            async with self.store.transaction():
                if not await self.queue.is_current(job):
                    await self._discard(user_id, [adapter_id])
                    return False
                old = await self.tables.adapters.ids(user_id)
                await self.tables.adapters.add(adapter_id, user_id, token, losses, sealed)
                await self.retention.set_deadline(user_id, "adapter", adapter_id, self.clock.now() + keep)
                await self._finish(job, "trained")
        for old_id in old:  # a retrained model replaces the previous one
            await self.retention.expire("adapter", user_id, old_id)
        for photo_id in photo_ids:
            await self.retention.expire("photo", user_id, photo_id)
        return True

    async def _signature_of_photos(self, user_id: str, photo_ids: list[str]) -> Signature | None:
        """The mean face descriptor of the given photos (their sealed intake fingerprints)."""
        wanted = set(photo_ids)
        embeddings = [
            Fingerprint.from_bytes(
                self.vault.open(user_id, "fingerprint", row["id"], row["fingerprint"])
            ).embedding
            for row in await self.tables.photos.fingerprints(user_id)
            if row["id"] in wanted
        ]
        return Signature.from_embeddings(embeddings) if embeddings else None

    async def signature(self, user_id: str) -> Signature | None:
        """The face signature kept with the user's current model (None: no model, or one trained before
        signatures existed). Opened in memory for the worker; never logged or exported."""
        adapter = await self.adapter(user_id)
        if adapter is None or adapter["signature"] is None:
            return None
        return Signature.from_bytes(
            self.vault.open(user_id, "signature", adapter["id"], adapter["signature"])
        )

    async def record_clip(self, job: Job, preset_key: str, clip: bytes, adapter_id: str) -> bool:
        """Store the marked MP4 of a video job as the job's one output (sealed, with the outputs'
        deadline) and finish it with a `video` delivery; False when the job was lost."""
        return await self.record_portraits(job, preset_key, [clip], adapter_id, delivery_kind="video")

    async def record_portraits(
        self,
        job: Job,
        preset_key: str,
        images: list[bytes],
        adapter_id: str,
        scores: list[PortraitScore] | None = None,
        metadata: dict[str, Any] | None = None,
        delivery_kind: str = "portraits",
    ) -> bool:
        """Store the encoded portraits of a generation job (with their scores, and the job's measurements
        in ``metadata``) and finish it, if this attempt still owns it; the model's lifetime starts again.
        ``delivery_kind`` is "video" for a clip (one output). Returns False (and stores nothing) when the job
        was lost."""
        user_id = job.user_id
        scores = scores or [PortraitScore(None, None, False)] * len(images)
        if len(scores) != len(images):
            raise ValueError("one score per image")
        output_ids = [new_id() for _ in images]
        async with self._blobs_or_nothing(user_id) as written:
            for output_id, data in zip(output_ids, images, strict=True):
                written.append(output_id)  # before the write: a failure after the rename leaves it
                await asyncio.to_thread(self.vault.put, user_id, "output", output_id, data)
            now = self.clock.now()
            keep = await self.model_retention(user_id)
            async with self.store.transaction():
                if not await self.queue.is_current(job):
                    await self._discard(user_id, output_ids)
                    return False
                for position, (output_id, score) in enumerate(zip(output_ids, scores, strict=True)):
                    await self.tables.outputs.add(
                        output_id,
                        user_id,
                        job.id,
                        preset_key,
                        position,
                        score.faces,
                        score.likeness,
                        score.below_minimum,
                    )
                    await self.retention.set_deadline(
                        user_id, "output", output_id, now + self.settings.retention.outputs
                    )
                if metadata is not None:
                    await self.queue.set_metadata(job.id, metadata)
                await self.tables.adapters.touch(adapter_id, now)
                await self.retention.set_deadline(user_id, "adapter", adapter_id, now + keep)
                await self._finish(job, delivery_kind)
        return True

    async def record_failure(self, job: Job, reason: str) -> str:
        """A failed attempt: retried with backoff while attempts remain, else the user is told.
        Returns the job's new state ("lost" when this attempt no longer owns it)."""
        state = await self.queue.fail(job, reason)
        if state != "lost":
            self.metrics.jobs.labels(job.kind, "retried" if state == "queued" else "failed").inc()
        if state == "failed":
            await self.retention.clear_deadline("job", job.id)
            if await self.is_known(job.user_id):
                await self.tables.deliveries.add(job.user_id, job.id, "failed")
        return state

    async def _finish(self, job: Job, delivery_kind: str) -> None:
        """Inside the results' transaction: queue the delivery and end the job, so a crash can neither
        leave results twice nor finish a job without its delivery."""
        await self.tables.deliveries.add(job.user_id, job.id, delivery_kind)
        if await self.queue.finish(job):
            self.metrics.jobs.labels(job.kind, "done").inc()
        await self.retention.clear_deadline("job", job.id)

    async def _discard(self, user_id: str, blob_ids: list[str]) -> None:
        """Delete blobs written for a job that was lost. If the user was erased meanwhile (/forget), the
        write created a new data key and blob folder for them: shred those too."""
        for blob_id in blob_ids:
            self.vault.delete(user_id, blob_id)
        if not await self.is_known(user_id):
            await asyncio.to_thread(self.vault.erase_owner, user_id)

    # -- outbox ---------------------------------------------------------------------------------------
    async def pending_deliveries(self, platform: str) -> list[Delivery]:
        deliveries = []
        for row in await self.tables.deliveries.pending(platform):
            chat = await self.chat_of(row["user_id"])
            if chat is None:
                continue
            job = await self.queue.get(row["job_id"])
            images: list[tuple[str, bytes]] = []
            scores: list[PortraitScore] = []
            preset = job.payload.get("preset") if job else None
            if row["kind"] in RESULT_KINDS:
                for output in await self.tables.outputs.scores_of_job(row["job_id"]):
                    data = self._output(row["user_id"], output["id"])
                    if data is not None:
                        images.append((output["id"], data))
                        scores.append(
                            PortraitScore(output["faces"], output["likeness"], bool(output["below_minimum"]))
                        )
            deliveries.append(
                Delivery(
                    row["id"],
                    row["user_id"],
                    row["job_id"],
                    row["kind"],
                    chat,
                    preset,
                    images,
                    job.error if job else None,
                    scores,
                    row["parts_sent"],
                )
            )
        return deliveries

    async def retry_deliveries_now(self) -> None:
        """At start-up: try every pending delivery at once instead of waiting out its backoff."""
        await self.tables.deliveries.retry_all_now()

    def _output(self, user_id: str, output_id: str) -> bytes | None:
        """A portrait's bytes, or None if it was deleted meanwhile (delivered or expired by another task)."""
        try:
            return self.vault.get(user_id, "output", output_id)
        except FileNotFoundError:
            return None

    async def delivery_failed(self, delivery: Delivery) -> None:
        """Back off after a failed send (1 s, 2 s, 4 s ... 1 h); give up after a day of tries."""
        attempts = await self.tables.deliveries.attempts(delivery.id)
        if attempts is None:
            return
        attempts += 1
        state = "undeliverable" if attempts >= MAX_DELIVERY_ATTEMPTS else "pending"
        not_before = self.clock.now() + min(3600.0, 2.0 ** (attempts - 1))
        await self.tables.deliveries.back_off(delivery.id, attempts, state, not_before)

    async def delivered(self, delivery: Delivery, message_ids: list[str], platform: str) -> None:
        """Record a completed send: message ids (for deletion), outputs gone once delivered.
        Holds the user's lock, so a /forget cannot slip between the send and this record."""
        async with self.user_lock(delivery.user_id):
            if not await self.is_known(delivery.user_id):
                return
            await self._record_delivery(delivery, message_ids, platform)

    async def part_sent(self, delivery: Delivery, part: int, message_ids: list[str], platform: str) -> None:
        """Record at once that the platform accepted part `part` (0-based) of a delivery, with its message
        ids: a restart resumes after it and never repeats an acknowledged send. Call it right after each
        platform call returns; `delivered` then closes the delivery."""
        async with self.user_lock(delivery.user_id):
            if not await self.is_known(delivery.user_id):
                return
            async with self.store.transaction():
                if await self.tables.deliveries.mark_part_sent(delivery.id, part + 1):
                    await self._record_messages(delivery, message_ids, platform)

    async def _record_messages(self, delivery: Delivery, message_ids: list[str], platform: str) -> None:
        now = self.clock.now()
        message_retention = await self.message_retention(delivery.user_id, platform)
        for message_id in message_ids:
            row_id = await self.tables.messages.add(delivery.user_id, message_id, "result", delivery.job_id)
            if delivery.kind in RESULT_KINDS and message_retention > 0:
                await self.retention.set_deadline(
                    delivery.user_id, "message", row_id, now + message_retention
                )

    async def _record_delivery(self, delivery: Delivery, message_ids: list[str], platform: str) -> None:
        async with self.store.transaction():
            await self.tables.deliveries.mark_sent(delivery.id)
            await self._record_messages(delivery, message_ids, platform)
        for output_id, _ in delivery.images:
            await self.retention.expire("output", delivery.user_id, output_id)

    async def record_message(
        self, user_id: str, message_id: str, kind: str, job_id: str | None = None
    ) -> None:
        await self.tables.messages.add(user_id, message_id, kind, job_id)

    async def progress_message(self, job_id: str) -> str | None:
        return await self.tables.messages.progress_of_job(job_id)

    async def messages(self, user_id: str) -> list[str]:
        return await self.tables.messages.ids_of_user(user_id)

    async def message_target(self, user_id: str, row_id: str) -> MessageTarget | None:
        """The chat and platform message id of one recorded message of the user (for deletion)."""
        row = await self.tables.messages.target(user_id, row_id)
        chat = await self.chat_of(user_id)
        if row is None or chat is None:
            return None
        return MessageTarget(row["platform"], chat, row["message_id"])

    async def run_due_deadlines(self, delete_message: MessageDeleter | None = None) -> dict[str, int]:
        """Delete everything overdue now (a standalone worker at start-up; the scheduler otherwise)."""
        return await self.retention.run_due(delete_message)

    # -- retention choices ----------------------------------------------------------------------------
    async def model_retention(self, user_id: str) -> float:
        user = await self.tables.users.get(user_id)
        cap = self.settings.retention.model
        return min(cap, user["model_retention"]) if user and user["model_retention"] is not None else cap

    async def message_retention(self, user_id: str, platform: str) -> float:
        user = await self.tables.users.get(user_id)
        chosen = user["message_retention"] if user and user["message_retention"] is not None else None
        value = self.settings.retention.messages if chosen is None else chosen
        return min(value, self.message_caps.get(platform, math.inf)) if value > 0 else 0.0

    async def set_model_retention(self, user_id: str, seconds: float) -> None:
        """A user's own choice, capped by the operator; applies at once to the current model."""
        seconds = min(seconds, self.settings.retention.model)
        await self.tables.users.set_model_retention(user_id, seconds)
        adapter = await self.adapter(user_id)
        if adapter:
            await self.retention.set_deadline(
                user_id, "adapter", adapter["id"], adapter["last_used_at"] + seconds
            )

    async def set_message_retention(self, user_id: str, seconds: float, platform: str) -> None:
        await self.tables.users.set_message_retention(user_id, seconds)
        effective = await self.message_retention(user_id, platform)
        for row in await self.tables.messages.results_of_user(user_id):
            if effective > 0:
                await self.retention.set_deadline(user_id, "message", row["id"], row["sent_at"] + effective)
            else:
                await self.retention.clear_deadline("message", row["id"])

    # -- status, export, forget -----------------------------------------------------------------------
    async def status(self, user_id: str, platform: str, policy_versions: Mapping[str, str]) -> UserStatus:
        deadlines = self.tables.deadlines
        jobs = [(job, await self.queue.position(job)) for job in await self.queue.active_jobs(user_id)]
        return UserStatus(
            consented=await self.has_consent(user_id, policy_versions),
            photos=await self.photo_count(user_id),
            photo_deadline=await deadlines.first_of_user(user_id, "photo"),
            has_model=await self.has_model(user_id),
            model_deadline=await deadlines.first_of_user(user_id, "adapter"),
            outputs=await self.tables.outputs.count(user_id),
            output_deadline=await deadlines.first_of_user(user_id, "output"),
            jobs=jobs,
            model_retention=await self.model_retention(user_id),
            message_retention=await self.message_retention(user_id, platform),
            allowances=await self.quotas.allowances(user_id),
            support_ref=self.access.support_ref(user_id),
        )

    async def export(self, user_id: str) -> tuple[bytes, bytes | None]:
        """Everything stored about the user: a JSON summary and a zip of their photos and portraits (None
        when there are none). Both are built in memory only."""
        summary: dict[str, Any] = {"user": "you (stored under a pseudonym)", "consents": [], "photos": []}
        user = await self.tables.users.get(user_id)
        if user:
            summary["created_at"] = user["created_at"]
            summary["model_retention_seconds"] = await self.model_retention(user_id)
            summary["language"] = user["language"]
        summary.update(await self.tables.users.export(user_id))
        if await self.signature(user_id) is not None:
            summary["face_signature"] = SIGNATURE_DESCRIPTION
        archive = io.BytesIO()
        with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as zipped:
            for photo in summary["photos"]:
                zipped.writestr(f"photos/{photo['id']}.png", self.vault.get(user_id, "photo", photo["id"]))
            for output in summary["outputs"]:
                data = self.vault.get(user_id, "output", output["id"])
                name = (
                    f"videos/{output['id']}.mp4" if data[4:8] == b"ftyp" else f"portraits/{output['id']}.png"
                )
                zipped.writestr(name, data)
        await self.tables.audit.add("export")
        files = archive.getvalue() if summary["photos"] or summary["outputs"] else None
        return json.dumps(readable(summary), indent=2, default=str).encode(), files

    async def forget(self, user_id: str) -> Receipt:
        """Erase the user: cancel jobs, shred the data key, delete blobs and rows, compact.
        Idempotent: a second call erases nothing and still returns a receipt."""
        async with self.user_lock(user_id):
            await self.queue.cancel_user(user_id)
            files = await asyncio.to_thread(self.vault.erase_owner, user_id)  # the key goes first
            rows = await self.tables.users.erase(user_id)
            counts = {
                "photos": rows["photos"],
                "models": rows["adapters"],
                "portraits": rows["outputs"],
                "jobs": rows["jobs"],
                "files": files,
                "consent records": rows["consents"],
                "records": sum(rows.values()),
            }
            receipt = Receipt(
                receipt_id=new_id()[:12].upper(),  # random: it cannot be linked back to the user
                at=self.clock.now(),
                counts=counts,
            )
            await self.tables.audit.add(
                "erasure", receipt=receipt.receipt_id, **{k.replace(" ", "_"): v for k, v in counts.items()}
            )
            await self.store.compact()
            for artifact, count in (("photo", rows["photos"]), ("adapter", rows["adapters"])):
                self.metrics.deletions.labels(artifact).inc(count)
            self.metrics.deletions.labels("output").inc(rows["outputs"])
            self.metrics.deletions.labels("user").inc(rows["users"])
            return receipt

    # -- running in public: access, flood control, operators, metrics ---------------------------------
    @contextlib.contextmanager
    def _counting_refusals(self) -> Iterator[None]:
        """Count each `Refused` raised inside the block by reason (metrics), and let it through."""
        try:
            yield
        except Refused as refused:
            self.metrics.refusals.labels(refused.reason).inc()
            raise

    def note_update(self, platform: str, kind: str) -> None:
        """Count one incoming update (platform: telegram|discord|console; kind: command|button|photo|text)."""
        self.metrics.updates.labels(platform, kind).inc()

    def admit_update(self, user_id: str) -> Verdict:
        """Flood control: OK to handle, WARN (tell the user once), or DROP (ignore, download nothing)."""
        verdict = self.flood.check(user_id)
        if verdict is not Verdict.OK:
            self.metrics.refusals.labels("flood").inc()
        return verdict

    async def require_access(self, user_id: str) -> None:
        """Raise `Refused("access")` unless the access mode admits the user (operators always)."""
        with self._counting_refusals():
            await self.access.require(user_id)

    async def redeem_invite(self, user_id: str, code: str) -> bool:
        """Admit the user with an invite code: True if admitted now, False if no code was needed.
        Raises `Refused("invite_invalid")` for an unknown, used-up or expired code."""
        with self._counting_refusals():
            return await self.access.redeem(user_id, code)

    def is_operator(self, user_id: str) -> bool:
        return self.access.is_operator(user_id)

    def support_reference(self, user_id: str) -> str:
        return self.access.support_ref(user_id)

    def _operator(self, user_id: str) -> str:
        if not self.access.is_operator(user_id):
            raise PermissionError("operator commands are for operators only")
        return user_id

    async def ops_overview(self, operator: str) -> Overview:
        self._operator(operator)
        return await self.ops.overview()

    async def create_invite(self, operator: str, uses: int = 1, valid_for: float = 7 * 86400.0) -> Invite:
        """A new invite code (shown once; stored only hashed) for `uses` new users, valid for `valid_for`."""
        self._operator(operator)
        if not 1 <= uses <= MAX_INVITE_USES or not 0 < valid_for <= MAX_INVITE_VALIDITY:
            raise ValueError("uses must be 1..1000 and the expiry at most 365 days")
        invite = await self.access.create_invite(uses, valid_for)
        await self.ops.record(operator, "ops_invite", uses=uses, valid_for=format_duration(valid_for))
        return invite

    async def pause_intake(self, operator: str) -> None:
        """Stop accepting new trainings and style requests; running and queued work goes on."""
        await self.ops.set_paused(self._operator(operator), True)

    async def resume_intake(self, operator: str) -> None:
        await self.ops.set_paused(self._operator(operator), False)

    async def block(self, operator: str, ref_text: str) -> BlockOutcome:
        """Refuse new work of the user with this support reference (as /status shows it)."""
        self._operator(operator)
        ref = self.access.normalise_ref(ref_text)
        if ref is None:
            return "invalid"
        if not await self.access.known_ref(ref):
            return "unknown"
        if not await self.tables.blocks.add(ref):
            return "unchanged"
        await self.ops.record(operator, "ops_block", ref=ref)
        return "blocked"

    async def unblock(self, operator: str, ref_text: str) -> BlockOutcome:
        self._operator(operator)
        ref = self.access.normalise_ref(ref_text)
        if ref is None:
            return "invalid"
        if not await self.tables.blocks.remove(ref):
            return "unchanged"
        await self.ops.record(operator, "ops_unblock", ref=ref)
        return "unblocked"

    async def ops_log(self, operator: str, limit: int = 20) -> list[LogEntry]:
        """The latest operator actions, newest first (operators by support reference)."""
        self._operator(operator)
        return await self.ops.log(limit)

    async def metrics_text(self) -> bytes:
        """The Prometheus exposition, with the gauges about stored state read now."""
        metrics, stats = self.metrics, self.tables.stats
        jobs = await stats.jobs_by_state()
        for kind in ("train", "generate"):
            metrics.queue_depth.labels(kind).set(jobs.get((kind, "queued"), 0))
            metrics.jobs_running.labels(kind).set(jobs.get((kind, "running"), 0))
        metrics.deliveries_pending.set(await stats.deliveries_pending())
        metrics.deadlines_overdue.set(await stats.deadlines_overdue(self.clock.now()))
        metrics.paused.set(1 if await self.ops.paused() else 0)
        blob_bytes = await asyncio.to_thread(self.vault.space_used)
        if blob_bytes is not None:
            metrics.blob_bytes.set(blob_bytes)
        return metrics.render()

    async def store_reachable(self) -> bool:
        try:
            return await self.tables.stats.ping()
        except Exception:
            log.warning("the store is not reachable", exc_info=True)
            return False
