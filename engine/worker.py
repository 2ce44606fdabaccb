"""The engine worker: claims jobs, runs the model, writes sealed results.

The model work runs in a thread, so the event loop (and the bot sharing it) stays responsive; a heartbeat
task renews the lease, records progress and notices cancellation (`/forget`). Before each stage and inside
the transaction that writes results the worker checks that its attempt still owns the job.
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.db import new_id
from engine.facade import Engine, PortraitScore
from engine.queue import Job

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
        self.motion_adapter = settings.motion_adapter
        self._videos: Any = None

    @property
    def videos(self) -> Any:
        """The clip generator on the same pipeline and adapter slots (its motion adapter loads on first use)."""
        if self._videos is None:
            from engine.ml.video import VideoGenerator

            self._videos = VideoGenerator(self.generator, self.motion_adapter)
        return self._videos


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
        log.info("worker %s ready (kinds: %s)", self.name, ", ".join(self.kinds) or "all")
        while not self._stopping.is_set():
            await self.drop_erased_adapters()
            job = await self.engine.queue.claim(self.name, self.kinds)
            if job is None:
                await self._idle(poll)
                continue
            await self.run_job(job)

    async def _idle(self, poll: float) -> None:
        """Wait for new work (woken by the database where it can tell), or until stopped."""
        waiters = {
            asyncio.create_task(self.engine.queue.wait_for_work(poll)),
            asyncio.create_task(self._stopping.wait()),
        }
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        for waiter in waiters:
            waiter.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)

    @property
    def kinds(self) -> tuple[str, ...]:
        """The job kinds this worker takes (LIKENESS_ENGINE_KINDS); empty: all."""
        return self.engine.settings.engine.job_kinds

    async def drop_erased_adapters(self) -> None:
        """Unload the adapters of users erased since they were loaded (also by another process)."""
        for owner in self.models.generator.owners():
            if not await self.engine.is_known(owner):
                self.models.generator.forget(owner)

    async def run_once(self) -> bool:
        """Claim and run one job if there is one (tests and benchmarks)."""
        if self.models is None:
            self.models = await asyncio.to_thread(Models, self.engine)
        job = await self.engine.queue.claim(self.name, self.kinds)
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
            await self.engine.record_failure(job, _reason(error))
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
        """Run the job's handler, looked up by its kind (the registry of what a worker can do)."""
        await self._check(job, progress)
        handlers = {"train": self._train, "generate": self._generate, "video": self._video}
        if job.kind not in handlers:
            raise ValueError(f"unknown job kind {job.kind!r}")
        await handlers[job.kind](job, progress)

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
        photo_ids = [photo_id for photo_id, _ in photos]
        if not await engine.record_adapter(job, result.adapter, result.losses, TOKEN, photo_ids):
            raise JobLost()
        self.models.generator.forget(user_id)
        log.info("job %s trained %d steps in %.1fs", job.id[:8], result.steps, result.seconds)

    async def _generate(self, job: Job, progress: _Progress) -> None:
        from engine.ml.generate import GenerationStopped
        from engine.ml.portraits import make_portraits
        from engine.provenance import mark_image

        engine, user_id = self.engine, job.user_id
        preset = engine.presets.get(job.payload.get("preset", ""))
        if preset is None or preset.video:
            raise ValueError("this style is no longer offered")
        adapter = await self._load_adapter(job, progress)
        settings = engine.settings.engine
        count = int(job.payload.get("count", settings.images_per_request))
        seed = int.from_bytes(os.urandom(4), "big")
        signature = await engine.signature(user_id)
        try:
            made = await self._compute(
                make_portraits,
                self.models.generator,
                user_id,
                preset,
                adapter["token"],
                count,
                settings.candidates,
                seed,
                signature,
                settings.min_likeness,
                progress=lambda f, s: progress.update(0.05 + 0.85 * f, s),
                should_stop=progress.stop.is_set,
            )
        except GenerationStopped:
            raise JobLost() from None
        del signature
        await self._check(job, progress)
        progress.update(0.92, "marking as AI-generated")
        config = provenance_config(engine)
        encoded = [await self._compute(mark_image, image, config) for image in made.images]
        scores = [
            PortraitScore(s.faces, s.likeness, made.measured and not s.reaches(settings.min_likeness))
            for s in made.scores
        ]
        if not await engine.record_portraits(
            job, preset.key, encoded, adapter["id"], scores, made.metadata()
        ):
            raise JobLost()

    async def _load_adapter(self, job: Job, progress: _Progress) -> Any:
        """The user's model row, with its weights loaded into the generator's slots."""
        engine, user_id = self.engine, job.user_id
        adapter = await engine.adapter(user_id)
        if adapter is None:
            raise ValueError("no trained model")
        progress.update(0.0, "loading your model")
        if not self.models.generator.has_adapter(user_id):
            adapter_bytes = await engine.adapter_weights(user_id, adapter["id"])
            await self._compute(self.models.generator.load_adapter, user_id, adapter_bytes)
            del adapter_bytes
        await self._check(job, progress)
        return adapter

    async def _video(self, job: Job, progress: _Progress) -> None:
        """One animated clip (MP4) of a video preset with the user's model, marked as AI-generated."""
        from engine.ml.generate import GenerationStopped
        from engine.provenance.video import mark_video

        engine = self.engine
        preset = engine.presets.get(job.payload.get("preset", ""))
        if preset is None or not preset.video:
            raise ValueError("this style is no longer offered")
        adapter = await self._load_adapter(job, progress)
        videos = self.models.videos
        progress.update(0.02, "loading the motion model")
        await self._compute(lambda: videos.pipeline)
        await self._check(job, progress)
        seed = int.from_bytes(os.urandom(4), "big")
        try:
            clip = await self._compute(
                videos.generate,
                job.user_id,
                preset,
                adapter["token"],
                seed,
                progress=lambda f, s: progress.update(0.05 + 0.85 * f, s),
                should_stop=progress.stop.is_set,
            )
        except GenerationStopped:
            raise JobLost() from None
        await self._check(job, progress)
        progress.update(0.92, "marking as AI-generated")
        data = await self._compute(mark_video, clip.frames, clip.fps, provenance_config(engine))
        if not await engine.record_clip(job, preset.key, data, adapter["id"]):
            raise JobLost()


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
