"""The engine worker: claims jobs, runs the model, writes sealed results.

The model work runs in a thread, so the event loop (and the bot sharing it) stays responsive; a heartbeat
task renews the lease, records progress and notices cancellation (`/forget`). Before each stage and inside
the transaction that writes results the worker checks that its attempt still owns the job.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine import retention
from engine.facade import Engine
from engine.queue import Job
from engine.store import new_id

log = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 2.0


class JobLost(Exception):
    """The job was cancelled or taken over by another attempt: stop without writing."""


@dataclass
class _Progress:
    """Shared between the model thread and the heartbeat task."""

    fraction: float = 0.0
    stage: str = "starting"
    stop: threading.Event = field(default_factory=threading.Event)

    def update(self, fraction: float, stage: str) -> None:
        self.fraction, self.stage = fraction, stage


class Models:
    """The resident pipeline and the per-user adapter cache, loaded once per worker process."""

    def __init__(self, engine: Engine):
        from engine.ml.device import pick_device
        from engine.ml.generate import Generator
        from engine.ml.pipeline import load_pipeline

        settings = engine.settings.engine
        self.device, self.dtype = pick_device(settings.device, settings.dtype)
        started = time.perf_counter()
        self.pipe = load_pipeline(settings.model, self.device, self.dtype)
        log.info("model %s loaded on %s in %.1fs", settings.model, self.device, time.perf_counter() - started)
        self.generator = Generator(self.pipe, cache_size=settings.adapter_cache)
        self.train_steps = settings.train_steps


# The rare token each user's LoRA is bound to (DreamBooth's convention). Every user has their own adapter,
# so one token serves all of them.
TOKEN = "sks"


class Worker:
    def __init__(self, engine: Engine, models: Models | None = None, name: str | None = None):
        self.engine = engine
        self.models = models
        self.name = name or f"{socket.gethostname()}-{os.getpid()}-{new_id()[:6]}"
        self._stopping = asyncio.Event()
        self.compute_seconds = 0.0  # pure model time, for the overhead benchmark

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        """Claim and run jobs until `stop()`; a running job is released (and resumed later) on stop."""
        if self.models is None:
            self.models = await asyncio.to_thread(Models, self.engine)
        poll = self.engine.settings.engine.poll_interval
        log.info("worker %s ready", self.name)
        while not self._stopping.is_set():
            await self.drop_erased_adapters()
            job = await self.engine.queue.claim(self.name)
            if job is None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), timeout=poll)
                continue
            await self.run_job(job)

    async def drop_erased_adapters(self) -> None:
        """Unload the adapters of users erased since they were loaded (also by another process)."""
        for owner in self.models.generator.owners():
            if await self.engine.store.user(owner) is None:
                self.models.generator.forget(owner)

    async def run_once(self) -> bool:
        """Claim and run one job if there is one (tests and benchmarks)."""
        if self.models is None:
            self.models = await asyncio.to_thread(Models, self.engine)
        job = await self.engine.queue.claim(self.name)
        if job is None:
            return False
        await self.run_job(job)
        return True

    async def run_job(self, job: Job) -> None:
        progress = _Progress()
        heartbeat = asyncio.create_task(self._heartbeat(job, progress))
        stop_waiter = asyncio.create_task(self._stopping.wait())
        work = asyncio.create_task(self._work(job, progress))
        try:
            done, _ = await asyncio.wait({work, stop_waiter}, return_when=asyncio.FIRST_COMPLETED)
            if work not in done:  # shutting down: stop the model thread and hand the job back
                progress.stop.set()
                await asyncio.gather(work, return_exceptions=True)
                await self.engine.queue.release(job)
                log.info("job %s released for later (shutdown)", job.id[:8])
                return
            await work
        except JobLost:
            log.info("job %s stopped: cancelled or taken over", job.id[:8])
        except Exception as error:  # a model or data error: retry with backoff, then tell the user
            log.exception("job %s failed (attempt %d)", job.id[:8], job.attempts)
            state = await self.engine.queue.fail(job, _reason(error))
            if state == "failed":
                await retention.clear_deadline(self.engine.store, "job", job.id)
                await self._notify(job, "failed")
        finally:
            heartbeat.cancel()
            stop_waiter.cancel()

    async def _heartbeat(self, job: Job, progress: _Progress) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_SECONDS)
            if not await self.engine.queue.heartbeat(job, progress.fraction, progress.stage):
                progress.stop.set()
                return

    async def _check(self, job: Job, progress: _Progress) -> None:
        if progress.stop.is_set() or not await self.engine.queue.is_current(job):
            progress.stop.set()
            raise JobLost()

    async def _work(self, job: Job, progress: _Progress) -> None:
        await self._check(job, progress)
        if job.kind == "train":
            await self._train(job, progress)
        elif job.kind == "generate":
            await self._generate(job, progress)
        else:
            raise ValueError(f"unknown job kind {job.kind!r}")

    async def _compute(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return await asyncio.to_thread(fn, *args, **kwargs)
        finally:
            self.compute_seconds += time.perf_counter() - started

    async def _train(self, job: Job, progress: _Progress) -> None:
        from PIL import Image

        from engine.ml.train import TrainConfig, TrainingStopped, train_lora

        engine, user_id = self.engine, job.user_id
        progress.update(0.0, "preparing photos")
        photos = await engine.photos(user_id)
        if not photos:
            raise ValueError("no photos to train on")
        images = [Image.open(io.BytesIO(data)).convert("RGB") for _, data in photos]
        await self._check(job, progress)
        config = TrainConfig(steps=self.models.train_steps) if self.models.train_steps else TrainConfig()
        try:
            result = await self._compute(
                train_lora,
                self.models.pipe,
                images,
                f"a photo of {TOKEN} person",
                config,
                progress=lambda f, s: progress.update(0.02 + 0.95 * f, s),
                should_stop=progress.stop.is_set,
            )
        except TrainingStopped:
            raise JobLost() from None
        await self._check(job, progress)
        progress.update(0.98, "saving your model")
        adapter_id = new_id()
        await asyncio.to_thread(engine.vault.put, user_id, "adapter", adapter_id, result.adapter)
        keep = await engine.model_retention(user_id)
        now = engine.clock.now()
        async with engine.store.transaction():
            if not await engine.queue.is_current(job):
                await self._discard(user_id, [adapter_id])
                raise JobLost()
            old = await engine.store.fetchall("SELECT id FROM adapters WHERE user_id=?", (user_id,))
            await engine.store.execute(
                "INSERT INTO adapters(id, user_id, token, losses, created_at, last_used_at) VALUES (?,?,?,?,?,?)",
                (
                    adapter_id,
                    user_id,
                    TOKEN,
                    json.dumps([round(x, 5) for x in result.losses]),
                    now,
                    now,
                ),
            )
            await retention.set_deadline(engine.store, user_id, "adapter", adapter_id, now + keep)
            await self._add_delivery(job, "trained")
            await engine.queue.finish(job)  # in the same transaction: a crash cannot leave results twice
            await retention.clear_deadline(engine.store, "job", job.id)
        for row in old:  # a retrained model replaces the previous one
            await retention.expire(engine, "adapter", user_id, row["id"])
        self.models.generator.forget(user_id)
        for photo_id, _ in photos:  # photos are kept only until training succeeds
            await retention.expire(engine, "photo", user_id, photo_id)
        log.info("job %s trained %d steps in %.1fs", job.id[:8], result.steps, result.seconds)

    async def _generate(self, job: Job, progress: _Progress) -> None:
        from engine.ml.generate import GenerationStopped
        from engine.provenance import mark_image

        engine, user_id = self.engine, job.user_id
        preset = engine.presets.get(job.payload.get("preset", ""))
        if preset is None:
            raise ValueError("this style is no longer offered")
        adapter = await engine.adapter(user_id)
        if adapter is None:
            raise ValueError("no trained model")
        progress.update(0.0, "loading your model")
        if not self.models.generator.has_adapter(user_id):
            adapter_bytes = await asyncio.to_thread(engine.vault.get, user_id, "adapter", adapter["id"])
            await self._compute(self.models.generator.load_adapter, user_id, adapter_bytes)
            del adapter_bytes
        await self._check(job, progress)
        count = int(job.payload.get("count", engine.settings.engine.images_per_request))
        seed = int.from_bytes(os.urandom(4), "big")
        try:
            images = await self._compute(
                self.models.generator.generate,
                user_id,
                preset,
                adapter["token"],
                count,
                seed,
                progress=lambda f, s: progress.update(0.05 + 0.85 * f, s),
                should_stop=progress.stop.is_set,
            )
        except GenerationStopped:
            raise JobLost() from None
        await self._check(job, progress)
        progress.update(0.92, "marking as AI-generated")
        config = provenance_config(engine)
        encoded = [await self._compute(mark_image, image, config) for image in images]
        output_ids = [new_id() for _ in encoded]
        for output_id, data in zip(output_ids, encoded, strict=True):
            await asyncio.to_thread(engine.vault.put, user_id, "output", output_id, data)
        now = engine.clock.now()
        async with engine.store.transaction():
            if not await engine.queue.is_current(job):
                await self._discard(user_id, output_ids)
                raise JobLost()
            for position, output_id in enumerate(output_ids):
                await engine.store.execute(
                    "INSERT INTO outputs(id, user_id, job_id, preset, position, created_at) VALUES (?,?,?,?,?,?)",
                    (output_id, user_id, job.id, preset.key, position, now),
                )
                await retention.set_deadline(
                    engine.store, user_id, "output", output_id, now + engine.settings.retention.outputs
                )
            keep = await engine.model_retention(user_id)
            await engine.store.execute("UPDATE adapters SET last_used_at=? WHERE id=?", (now, adapter["id"]))
            await retention.set_deadline(engine.store, user_id, "adapter", adapter["id"], now + keep)
            await self._add_delivery(job, "portraits")
            await engine.queue.finish(job)
            await retention.clear_deadline(engine.store, "job", job.id)

    async def _discard(self, user_id: str, blob_ids: list[str]) -> None:
        """Delete blobs written for a job that was lost. If the user was erased meanwhile (/forget), the
        write created a new data key and blob folder for them: shred those too."""
        for blob_id in blob_ids:
            self.engine.vault.delete(user_id, blob_id)
        if await self.engine.store.user(user_id) is None:
            await asyncio.to_thread(self.engine.vault.erase_owner, user_id)

    async def _add_delivery(self, job: Job, kind: str) -> None:
        await self.engine.store.execute(
            "INSERT OR IGNORE INTO deliveries(id, user_id, job_id, kind, state, created_at) "
            "VALUES (?,?,?,?,'pending',?)",
            (new_id(), job.user_id, job.id, kind, self.engine.clock.now()),
        )

    async def _notify(self, job: Job, kind: str) -> None:
        if await self.engine.store.user(job.user_id):
            await self._add_delivery(job, kind)


def provenance_config(engine: Engine) -> Any:
    from engine.provenance import ProvenanceConfig

    settings = engine.settings.provenance
    deployment = settings.deployment_id or engine.pseudonym("deployment", "id")
    return ProvenanceConfig(
        deployment_id=deployment,
        invisible_watermark=settings.invisible_watermark,
        visible_watermark=settings.visible_watermark,
        c2pa_cert=Path(settings.c2pa_cert) if settings.c2pa_cert else None,
        c2pa_key=Path(settings.c2pa_key) if settings.c2pa_key else None,
    )


def _reason(error: Exception) -> str:
    """A short failure reason for the user: the exception type and first line, no personal data."""
    text = str(error).splitlines()[0][:200] if str(error) else ""
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
