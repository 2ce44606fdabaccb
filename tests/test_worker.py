"""The engine worker under failure: kill -9, SIGTERM, a superseded attempt, model errors, /forget during a
job, no plaintext on disk, the `verify` command, and a responsive event loop. Real Engine, real vault and
SQLite, real diffusers/peft on the tiny offline pipeline, real `python -m engine` subprocesses."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import asyncio
import builtins
import contextlib
import dataclasses
import io
import itertools
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import diffusers
import pytest
import transformers

import engine.ml.train as ml_train
from engine.clock import FakeClock
from engine.facade import Engine
from engine.settings import load_settings
from engine.worker import JobLost, Models, Worker, _Progress
from tests import faces_data as fd

diffusers.utils.logging.set_verbosity_error()
transformers.utils.logging.set_verbosity_error()

ROOT = Path(__file__).resolve().parents[1]
FAST_PRESET = """
[presets.fast]
label = "Fast"
prompt = "portrait photo of {token}"
negative_prompt = "blurry"
steps = 2
guidance = 6.0
aspect = "1:1"
"""
CHAT = {"chat_id": 424242, "user_id": 777001}
pytestmark = pytest.mark.timeout(300)  # a hang fails the test instead of the whole run

WAIT = 120.0  # upper bound for any wait on another process or thread; never a measured duration


# -- fixtures and helpers ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def presets_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("presets") / "presets.toml"
    path.write_text(FAST_PRESET, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def photo_bytes() -> list[bytes]:
    """Three photos of one person that pass intake (original, mirrored, slightly rotated)."""
    return list(fd.same_person_photos())


def settings_env(data_dir: Path, presets: Path, **extra: str) -> dict[str, str]:
    env = {
        "LIKENESS_DATA_DIR": str(data_dir),
        "LIKENESS_ENGINE_MODEL": "tiny",
        "LIKENESS_ENGINE_DEVICE": "cpu",
        "LIKENESS_ENGINE_TRAIN_STEPS": "3",
        "LIKENESS_ENGINE_IMAGES_PER_REQUEST": "1",
        "LIKENESS_ENGINE_POLL_INTERVAL": "0.2",
        "LIKENESS_ENGINE_PRESETS": str(presets),
        "LIKENESS_UPLOAD_MIN_PHOTOS": "3",
        "LIKENESS_LOG_LEVEL": "INFO",
    }
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def models(tmp_path_factory, presets_file) -> Models:
    """One resident tiny pipeline for every in-process worker of this module (3 training steps)."""
    settings = load_settings(settings_env(tmp_path_factory.mktemp("models"), presets_file))
    return Models(SimpleNamespace(settings=settings))


_opened: list[Engine] = []


@pytest.fixture(autouse=True)
async def close_engines():
    """Close every engine a test opened, also when it failed (an open aiosqlite thread blocks exit)."""
    yield
    while _opened:
        with contextlib.suppress(Exception):
            await _opened.pop().close()


async def seeded(data_dir: Path, presets: Path, photos: list[bytes], clock=None, **extra: str):
    """An engine with one consenting user, three accepted photos and a queued training job."""
    engine = await Engine.open(load_settings(settings_env(data_dir, presets, **extra)), clock)
    _opened.append(engine)
    user = engine.pseudonym("telegram", CHAT["user_id"])
    await engine.give_consent(user, "telegram", CHAT, "1", "self")
    for data in photos:
        assert type((await engine.add_photo(user, data)).outcome).__name__ == "Accepted"
    job_id = await engine.start_training(user)
    return engine, user, job_id


async def wait_until(check, what: str, proc: subprocess.Popen | None = None, log: Path | None = None):
    """Poll `check()` until it is truthy; fail if `proc` exits first or after WAIT seconds."""
    deadline = time.monotonic() + WAIT
    while not (result := await check()):
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"worker exited ({proc.returncode}) before {what}:\n{log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting for {what}")
        await asyncio.sleep(0.1)
    return result


def start_worker_process(data_dir: Path, presets: Path, log: Path, **extra: str) -> subprocess.Popen:
    """`python -m engine` in its own process, logging to `log`."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
    env.update(settings_env(data_dir, presets, **extra))
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "engine"], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT
        )


async def running_with_progress(engine: Engine, job_id: str):
    job = await engine.queue.get(job_id)
    return job if job.state == "running" and job.progress > 0 else None


async def count(engine: Engine, sql: str, *params) -> int:
    return (await engine.store.fetchone(f"SELECT COUNT(*) AS n FROM {sql}", params))["n"]


async def job_row(engine: Engine, job_id: str) -> tuple:
    row = await engine.store.fetchone("SELECT state, attempts, worker FROM jobs WHERE id=?", (job_id,))
    return tuple(row)


def blob_files(engine: Engine, user: str) -> list[str]:
    folder = engine.vault.blob_dir / user
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


# -- 1. kill -9 mid-job, and a superseded attempt --------------------------------------------------------


async def test_kill_9_mid_training_completes_exactly_once(tmp_path, presets_file, photo_bytes, models):
    data = tmp_path / "data"
    engine, user, job_id = await seeded(data, presets_file, photo_bytes, LIKENESS_ENGINE_LEASE="3s")
    log = tmp_path / "worker.log"
    proc = start_worker_process(
        data, presets_file, log, LIKENESS_ENGINE_LEASE="3s", LIKENESS_ENGINE_TRAIN_STEPS="100000"
    )
    try:
        first = await wait_until(
            lambda: running_with_progress(engine, job_id), "training progress", proc, log
        )
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=WAIT) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert first.attempts == 1
    assert await count(engine, "adapters") == 0

    # A second worker takes the job over once the dead worker's lease runs out.
    worker = Worker(engine, models, name="second")
    await wait_until(worker.run_once, "the lease to expire and the job to be taken over")
    assert await job_row(engine, job_id) == ("done", 2, "second")
    assert await count(engine, "adapters WHERE user_id=?", user) == 1
    assert await count(engine, "deliveries WHERE job_id=? AND kind='trained'", job_id) == 1
    assert await count(engine, "deliveries") == 1
    assert await count(engine, "photos") == 0  # photos are deleted once training succeeded
    adapter = await engine.adapter(user)
    assert blob_files(engine, user) == [f"{adapter['id']}.bin"]

    # The killed attempt's lease is worthless: it can no longer renew, finish or fail the job.
    stale = dataclasses.replace(first, attempts=1)
    assert not await engine.queue.is_current(stale)
    assert not await engine.queue.heartbeat(stale, 0.5, "training")
    assert not await engine.queue.finish(stale)
    assert await engine.queue.fail(stale, "late") == "lost"
    assert (await engine.queue.get(job_id)).state == "done"
    assert user not in log.read_text()  # the worker never logs who the job is for
    await engine.close()


@pytest.mark.parametrize("takeover", ["after model", "before commit"])
async def test_superseded_attempt_raises_joblost_and_writes_nothing(
    tmp_path, presets_file, photo_bytes, models, monkeypatch, takeover
):
    clock = FakeClock()
    engine, user, job_id = await seeded(tmp_path, presets_file, photo_bytes, clock)
    photos_before = blob_files(engine, user)
    stale = Worker(engine, models, name="stale")
    job = await engine.queue.claim("stale")
    taken: list = []

    async def take_over() -> None:  # the stale worker's lease lapses and another worker claims the job
        clock.advance(engine.settings.engine.lease + 1)
        taken.append(await engine.queue.claim("newer"))

    if takeover == "after model":
        real_compute = stale._compute

        async def compute_then_lose(fn, *args, **kwargs):
            result = await real_compute(fn, *args, **kwargs)
            await take_over()
            return result

        monkeypatch.setattr(stale, "_compute", compute_then_lose)
    else:  # between sealing the adapter and the transaction that would record it
        real_retention = engine.model_retention

        async def lose_then_retention(user_id):
            await take_over()
            return await real_retention(user_id)

        monkeypatch.setattr(engine, "model_retention", lose_then_retention)

    with pytest.raises(JobLost):
        await stale._work(job, _Progress())
    assert taken[0].attempts == 2
    assert await job_row(engine, job_id) == ("running", 2, "newer")
    assert await count(engine, "adapters") == 0
    assert await count(engine, "deliveries") == 0
    assert await count(engine, "photos WHERE user_id=?", user) == 3
    assert blob_files(engine, user) == photos_before  # no adapter blob left behind

    # The newer attempt finishes normally, once.
    monkeypatch.undo()
    await Worker(engine, models, name="newer").run_job(taken[0])
    assert (await engine.queue.get(job_id)).state == "done"
    assert await count(engine, "adapters") == 1
    assert await count(engine, "deliveries WHERE kind='trained'") == 1
    await engine.close()


# -- 2. SIGTERM: a clean shutdown hands the job back -----------------------------------------------------


async def test_sigterm_releases_running_job_for_another_worker(tmp_path, presets_file, photo_bytes, models):
    data = tmp_path / "data"
    engine, user, job_id = await seeded(data, presets_file, photo_bytes)
    log = tmp_path / "worker.log"
    proc = start_worker_process(data, presets_file, log, LIKENESS_ENGINE_TRAIN_STEPS="100000")
    try:
        await wait_until(lambda: running_with_progress(engine, job_id), "training progress", proc, log)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=WAIT) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert await job_row(engine, job_id) == ("queued", 0, None)
    assert "released for later" in log.read_text()
    assert user not in log.read_text()
    assert await count(engine, "adapters") == 0

    assert await Worker(engine, models, name="next").run_once()
    job = await engine.queue.get(job_id)
    assert (job.state, job.attempts) == ("done", 1)
    assert await count(engine, "deliveries WHERE job_id=? AND kind='trained'", job_id) == 1
    await engine.close()


# -- 3. no plaintext image or adapter file anywhere ------------------------------------------------------

PLAINTEXT_MARKS = {
    b"\x89PNG\r\n\x1a\n": "PNG",
    b"\xff\xd8\xff\xe0": "JPEG/JFIF",
    b"\xff\xd8\xff\xe1": "JPEG/Exif",
    b"\xff\xd8\xff\xdb": "JPEG",
    b'"__metadata__"': "safetensors header",
    b"lora_A": "LoRA tensor name",
    b"likeness-lora": "adapter format tag",
}


def snapshot(*folders: Path) -> dict[Path, tuple[int, int]]:
    return {
        path: (stat.st_size, stat.st_mtime_ns)
        for folder in folders
        for path in folder.rglob("*")
        if path.is_file() and (stat := path.stat())
    }


@contextlib.contextmanager
def record_writes():
    """Every path opened for writing through builtins.open, io.open or os.open, from any thread."""
    writes: list[str] = []
    real_open, real_os_open = builtins.open, os.open
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

    def spy_open(file, mode="r", *args, **kwargs):
        if isinstance(file, str | bytes | os.PathLike) and any(flag in mode for flag in "wxa+"):
            writes.append(os.fsdecode(file))
        return real_open(file, mode, *args, **kwargs)

    def spy_os_open(path, flags, *args, **kwargs):
        if flags & write_flags:
            writes.append(os.fsdecode(path))
        return real_os_open(path, flags, *args, **kwargs)

    with (
        pytest.MonkeyPatch.context() as patch,
    ):
        patch.setattr(builtins, "open", spy_open)
        patch.setattr(io, "open", spy_open)
        patch.setattr(os, "open", spy_os_open)
        yield writes


async def test_no_plaintext_file_during_training_and_generation(
    tmp_path, presets_file, photo_bytes, models, monkeypatch
):
    data, cwd, tmp = tmp_path / "data", tmp_path / "cwd", tmp_path / "tmp"
    cwd.mkdir()
    tmp.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    engine, user, job_id = await seeded(data, presets_file, photo_bytes)
    generate_id = await engine.request_portraits(user, "fast")
    worker = Worker(engine, models)
    folders = (data.resolve(), Path(tempfile.gettempdir()).resolve(), Path.cwd().resolve())
    before = snapshot(*folders)

    with record_writes() as writes:
        assert await worker.run_once()  # train
        assert await worker.run_once()  # generate, mark and seal
    after = snapshot(*folders)

    assert (await engine.queue.get(job_id)).state == "done"
    assert (await engine.queue.get(generate_id)).state == "done"
    outside = [p for p in writes if not Path(p).resolve().is_relative_to(data.resolve())]
    assert outside == []
    assert writes, "the spy saw no write at all (the vault writes its blobs with open())"
    changed = [p for p, meta in after.items() if before.get(p) != meta]
    assert changed and all(p.is_relative_to(data.resolve()) for p in changed)
    for path in changed:
        content = path.read_bytes()
        found = [name for mark, name in PLAINTEXT_MARKS.items() if mark in content]
        assert found == [], f"{path.relative_to(data.resolve())} holds {found}"
        if path.suffix == ".bin":
            assert content.startswith(b"LKV1")  # a vault blob
    new_blobs = {p.name for p in changed if p.suffix == ".bin"}
    adapter = await engine.adapter(user)
    outputs = await engine.store.fetchall("SELECT id FROM outputs WHERE user_id=?", (user,))
    assert new_blobs == {f"{adapter['id']}.bin"} | {f"{row['id']}.bin" for row in outputs}
    await engine.close()


# -- 4. a failing model step: retries with backoff, then the user is told --------------------------------


async def test_failing_training_retries_with_backoff_then_tells_user(
    tmp_path, presets_file, photo_bytes, models, monkeypatch
):
    clock = FakeClock()
    engine, user, job_id = await seeded(tmp_path, presets_file, photo_bytes, clock)
    calls: list[int] = []

    def out_of_memory(pipe, images, *args, **kwargs):
        calls.append(len(images))
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB\nlong traceback detail")

    monkeypatch.setattr(ml_train, "train_lora", out_of_memory)
    worker = Worker(engine, models)
    backoff = engine.queue.backoff
    assert engine.settings.engine.max_attempts == 3
    for attempt, wait in ((1, backoff), (2, 2 * backoff)):
        assert await worker.run_once()
        job = await engine.queue.get(job_id)
        assert (job.state, job.attempts) == ("queued", attempt)
        assert job.error == "RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB"
        clock.advance(wait - 1)
        assert not await worker.run_once()  # still backing off
        clock.advance(1)
    assert await worker.run_once()
    job = await engine.queue.get(job_id)
    assert (job.state, job.attempts) == ("failed", 3)
    assert calls == [3, 3, 3]
    assert await count(engine, "photos") == 3  # kept for another try, until their deadline

    [delivery] = await engine.pending_deliveries("telegram")
    assert (delivery.kind, delivery.job_id, delivery.chat) == ("failed", job_id, CHAT)
    assert delivery.error == "RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB"
    for personal in (user, str(CHAT["chat_id"]), str(CHAT["user_id"])):
        assert personal not in delivery.error
    assert not await worker.run_once()  # nothing left to retry
    await engine.close()


# -- 5. /forget while a generation is running ------------------------------------------------------------


async def test_forget_during_generation_stops_it_and_writes_nothing(
    tmp_path, presets_file, photo_bytes, models, monkeypatch
):
    engine, user, _ = await seeded(tmp_path, presets_file, photo_bytes)
    worker = Worker(engine, models)
    assert await worker.run_once()  # train
    assert await engine.adapter(user) is not None
    generate_id = await engine.request_portraits(user, "fast")

    started, forgotten = threading.Event(), threading.Event()
    seen: dict[str, object] = {}
    real_generate = models.generator.generate

    def generate_after_forget(*args, should_stop, **kwargs):
        started.set()
        forgotten.wait(WAIT)
        deadline = time.monotonic() + WAIT  # the worker's heartbeat notices the erasure
        while not should_stop() and time.monotonic() < deadline:
            time.sleep(0.05)
        seen["told to stop"] = should_stop()
        try:
            return real_generate(*args, should_stop=should_stop, **kwargs)
        except Exception as error:
            seen["raised"] = type(error).__name__
            raise

    monkeypatch.setattr(models.generator, "generate", generate_after_forget)
    job = asyncio.create_task(worker.run_once())
    assert await asyncio.to_thread(started.wait, WAIT)
    receipt = await engine.forget(user)
    forgotten.set()
    assert await job  # the worker handled the job and survived
    assert receipt.counts["models"] == 1 and receipt.counts["jobs"] == 2

    assert seen == {"told to stop": True, "raised": "GenerationStopped"}
    assert await engine.queue.get(generate_id) is None  # erased with the user
    for table in ("outputs", "deliveries", "jobs", "adapters", "photos", "users"):
        assert await count(engine, table) == 0, table
    assert not (engine.vault.blob_dir / user).exists()
    assert not engine.vault.keys.has_key(user)
    await engine.close()


# -- 6. `python -m engine verify` on a delivered portrait ------------------------------------------------


async def test_verify_command_on_generated_and_unmarked_images(tmp_path, presets_file, photo_bytes, models):
    engine, user, _ = await seeded(tmp_path / "data", presets_file, photo_bytes)
    worker = Worker(engine, models)
    assert await worker.run_once()
    await engine.request_portraits(user, "fast")
    assert await worker.run_once()
    deliveries = {d.kind: d for d in await engine.pending_deliveries("telegram")}
    [(_, portrait)] = deliveries["portraits"].images  # decrypted in memory
    await engine.close()
    marked, plain = tmp_path / "portrait.png", tmp_path / "plain.png"
    marked.write_bytes(portrait)
    plain.write_bytes(fd.encode(fd.astronaut(), "PNG"))

    result = subprocess.run(
        [sys.executable, "-m", "engine", "verify", str(marked), str(plain)],
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        capture_output=True,
        text=True,
        timeout=WAIT,
    )
    assert result.returncode == 0, result.stderr
    report = result.stdout.split(str(plain))
    assert "watermark: present" in report[0] and "iptc/xmp:  present" in report[0]
    assert "watermark: absent" in report[1] and "iptc/xmp:  absent" in report[1]


# -- 7. the event loop stays responsive while the model trains -------------------------------------------


async def test_event_loop_keeps_running_while_training(
    tmp_path, presets_file, photo_bytes, models, monkeypatch
):
    engine, _, job_id = await seeded(tmp_path, presets_file, photo_bytes)
    ticks = 0
    at_each_step: list[int] = []
    real_train = ml_train.train_lora

    def train_counting_ticks(*args, progress, **kwargs):
        def tracked(fraction: float, stage: str) -> None:
            if stage.startswith("training step"):
                at_each_step.append(ticks)
            progress(fraction, stage)

        return real_train(*args, progress=tracked, **kwargs)

    async def other_coroutine() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.005)

    monkeypatch.setattr(ml_train, "train_lora", train_counting_ticks)
    monkeypatch.setattr(models, "train_steps", 5)
    counter = asyncio.create_task(other_coroutine())
    try:
        assert await Worker(engine, models).run_once()
    finally:
        counter.cancel()
    assert (await engine.queue.get(job_id)).state == "done"
    assert len(at_each_step) == 5
    # Between any two training steps the loop ran the other coroutine: training never blocked it.
    assert all(later > earlier for earlier, later in itertools.pairwise(at_each_step))
    await engine.close()
