"""Beyond one machine, end to end: PostgreSQL + an S3-compatible server (moto, versioned bucket) + two
`python -m engine` worker processes + the bot against the fake Telegram server, each with its own data dir.

One worker is killed with SIGKILL mid-training; the other takes the job over when the lease runs out, and
the model and the portraits are delivered once. Then /forget leaves nothing of the user in either database
or the bucket, and no process wrote anything of them to its local data dir.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import boto3
import psycopg
import pytest

from bot.app import App
from engine.db import USER_TABLES
from engine.vault import encode_master_key, new_master_key
from tests import faces_data as fd
from tests.fake_telegram import FakeTelegram
from tests.tiny_settings import TINY_ENV, tiny_settings

pytestmark = pytest.mark.timeout(900)

ROOT = Path(__file__).resolve().parent.parent
ALICE = 3001
SLOW = 300.0  # model work on a busy 2-core CPU


def start_worker(env: dict[str, str], data_dir: Path, log: Path, **extra: str) -> subprocess.Popen:
    full = {**os.environ, **TINY_ENV, **env, "LIKENESS_DATA_DIR": str(data_dir), **extra}
    full.update(PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "engine"], cwd=ROOT, env=full, stdout=out, stderr=subprocess.STDOUT
        )


async def wait_until(check, what: str, timeout: float = SLOW):
    deadline = time.monotonic() + timeout
    while not (result := await check()):
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting for {what}")
        await asyncio.sleep(0.2)
    return result


def versions(bucket: str) -> list[str]:
    """Every object version and delete marker in the bucket, by key."""
    page = boto3.client("s3").list_object_versions(Bucket=bucket)
    return [entry["Key"] for entry in [*page.get("Versions", []), *page.get("DeleteMarkers", [])]]


def files_in(folder: Path) -> list[str]:
    return (
        sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
        if folder.exists()
        else []
    )


async def test_two_workers_on_postgres_and_s3_survive_a_kill_and_forget_everything(
    postgres_server, bucket, tmp_path
) -> None:
    main_db, key_db = postgres_server.new_database(), postgres_server.new_database()
    shared = {
        "LIKENESS_DATABASE_URL": postgres_server.url(main_db),
        "LIKENESS_KEYSTORE_URL": postgres_server.url(key_db),
        "LIKENESS_BLOBS_URL": f"s3://{bucket}/deploy",
        "LIKENESS_MASTER_KEY": encode_master_key(new_master_key()),
        "LIKENESS_ENGINE_LEASE": "3s",
    }
    fake = FakeTelegram()
    await fake.start()
    settings = tiny_settings(
        tmp_path / "bot",
        **shared,
        LIKENESS_TELEGRAM_TOKEN=fake.token,
        LIKENESS_TELEGRAM_API_URL=fake.base_url,
        LIKENESS_ENGINE_EMBEDDED_WORKER="false",
    )
    app = await App.create(settings)
    await app.start()
    engine, texts = app.engine, app.conversation.t
    first = start_worker(shared, tmp_path / "w1", tmp_path / "w1.log", LIKENESS_ENGINE_TRAIN_STEPS="100000")
    second: subprocess.Popen | None = None
    try:
        alice = fake.user(ALICE)
        user = engine.pseudonym("telegram", ALICE)
        await alice.send_text("/start")
        consent = await fake.wait_for_message(ALICE, "Do you agree?")
        await alice.press(consent, texts.button("agree"))
        await fake.wait_for_message(ALICE, "Thank you!")
        await alice.send_album(list(fd.same_person_photos()))
        summary = await fake.wait_for_message(ALICE, "photos so far", timeout=SLOW)
        await alice.press(summary, texts.button("train"))
        await fake.wait_for_message(ALICE, "Training queued")

        async def training_in_first_worker():
            (job,) = await engine.queue.active_jobs(user)
            return job if job.state == "running" and job.progress > 0 else None

        taken = await wait_until(training_in_first_worker, "the first worker to train")
        os.kill(first.pid, signal.SIGKILL)
        assert first.wait(timeout=60) == -signal.SIGKILL
        second = start_worker(shared, tmp_path / "w2", tmp_path / "w2.log")

        trained = await fake.wait_for_message(ALICE, "model is ready", timeout=SLOW)
        job = await engine.queue.get(taken.id)
        assert (job.state, job.attempts) == ("done", 2)  # the second worker took it over
        style = next(b["text"] for b in trained.buttons if b.get("callback_data", "").startswith("style"))
        await alice.press(trained, style)
        await fake.wait_for_message(ALICE, "⬆️", timeout=SLOW)
        await asyncio.sleep(2)  # anything sent twice would arrive now
        ready = [m for m in fake.messages(ALICE) if "model is ready" in (m.text or "")]
        portraits = [m for m in fake.messages(ALICE) if m.document is not None]
        assert len(ready) == 1
        assert len(portraits) == settings.engine.images_per_request
        stored = versions(bucket)
        assert [key for key in stored if user in key]  # the model is in the bucket, under the prefix
        assert all(key.startswith("deploy/") for key in stored)

        await alice.send_text("/forget")
        confirm = await fake.wait_for_message(ALICE, "Continue?")
        await alice.press(confirm, texts.button("forget_yes"))
        await fake.wait_for_message(ALICE, "Everything is deleted", timeout=60)

        async def rows_of_alice() -> int:
            total = 0
            for table in USER_TABLES:
                column = "id" if table == "users" else "user_id"
                total += (
                    await engine.store.fetchone(
                        f"SELECT COUNT(*) AS n FROM {table} WHERE {column}=?", (user,)
                    )
                )["n"]
            return total

        assert await rows_of_alice() == 0
        with psycopg.connect(postgres_server.url(key_db)) as keys:
            assert keys.execute("SELECT COUNT(*) FROM data_keys WHERE owner=%s", (user,)).fetchone()[0] == 0
        assert [key for key in versions(bucket) if user in key] == []  # every version and marker
        for folder in ("bot", "w1", "w2"):  # nothing personal, and no rows, in any local data dir
            assert [name for name in files_in(tmp_path / folder) if not name.endswith(".log")] == []
        for log in ("w1.log", "w2.log"):
            assert user not in (tmp_path / log).read_text()
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
        await app.stop()
        await fake.stop()
