"""Store faults: a disk that fills during a blob write, and "database is locked" from another connection.

Each must end in a clear refusal for the user, no half-written blob, no plaintext, no row, and a retry
that works once the fault is gone. The disk-full case runs twice: an injected ENOSPC from fsync (what a
full disk with delayed allocation returns), and a real 2 MB tmpfs filled up (Linux, via `unshare`).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from engine import blobs as vault_module
from engine.errors import REASONS, Refused
from engine.facade import Engine
from engine.intake import Accepted, Rejected
from engine.vault import Vault
from tests.faces_data import same_person_photos
from tests.tiny_settings import tiny_settings

ROOT = Path(__file__).resolve().parent.parent


def files_under(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()]


def full_disk(*_: object) -> None:
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.fixture
async def engine(data_dir: Path) -> AsyncIterator[Engine]:
    engine = await Engine.open(tiny_settings(data_dir))
    yield engine
    await engine.close()


def test_a_failed_blob_write_leaves_no_file(vault: Vault, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vault_module.os, "fsync", full_disk)
    with pytest.raises(OSError) as caught:
        vault.put("owner1", "photo", "blob1", b"secret pixels" * 1000)
    assert caught.value.errno == errno.ENOSPC
    assert files_under(vault.blob_dir) == []  # neither the blob nor its temp file


def test_storage_reasons_have_texts() -> None:
    from engine.settings import load_settings

    texts = (ROOT / "config" / "texts" / "en.toml").read_text()
    assert {"storage_full", "storage_busy"} <= REASONS
    for reason in ("storage_full", "storage_busy"):
        assert f"\n{reason} = " in texts
    assert load_settings  # the texts file is the one the settings load


async def test_disk_full_refuses_the_photo_cleanly_then_it_works(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    user = engine.pseudonym("telegram", 1)
    await engine.touch_user(user, "telegram")
    photo = same_person_photos()[0]
    with monkeypatch.context() as patch:
        patch.setattr(vault_module.os, "fsync", full_disk)
        result = await engine.add_photo(user, photo)
    assert isinstance(result.outcome, Rejected) and result.outcome.code == "storage_full"
    assert result.count == 0 and await engine.photo_count(user) == 0
    assert files_under(engine.vault.blob_dir) == []
    result = await engine.add_photo(user, photo)  # the disk has room again
    assert isinstance(result.outcome, Accepted) and await engine.photo_count(user) == 1


async def test_disk_full_while_writing_portraits_leaves_no_blob(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The second of two portraits hits a full disk: the first is removed again, the job not finished."""
    user = engine.pseudonym("telegram", 2)
    await engine.touch_user(user, "telegram")
    job_id = await engine.queue.enqueue(user, "generate", {"preset": "x"})
    job = await engine.queue.claim("w1")
    assert job is not None and job.id == job_id
    writes = 0
    real_fsync = os.fsync

    def second_write_fails(fd: int) -> None:
        nonlocal writes
        writes += 1
        if writes == 2:
            full_disk()
        real_fsync(fd)

    monkeypatch.setattr(vault_module.os, "fsync", second_write_fails)
    with pytest.raises(Refused) as caught:
        await engine.record_portraits(job, "x", [b"portrait one", b"portrait two"], "adapter0")
    assert caught.value.reason == "storage_full"
    assert files_under(engine.vault.blob_dir) == []
    assert (await engine.queue.get(job_id)).state == "running"  # the worker's failure path retries it


async def test_database_locked_by_another_process_refuses_cleanly(engine: Engine, data_dir: Path) -> None:
    user = engine.pseudonym("telegram", 3)
    await engine.touch_user(user, "telegram")
    await engine.store.execute("PRAGMA busy_timeout=200")  # the default waits 10 s before giving up
    other = sqlite3.connect(data_dir / "likeness.sqlite3", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    try:
        result = await engine.add_photo(user, same_person_photos()[0])
        with pytest.raises(Refused) as caught:
            await engine._enqueue(user, "train", {})
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert isinstance(result.outcome, Rejected) and result.outcome.code == "storage_busy"
    assert caught.value.reason == "storage_busy"
    assert files_under(engine.vault.blob_dir) == []
    assert await engine.photo_count(user) == 0
    assert await engine.queue.active_jobs(user) == []
    result = await engine.add_photo(user, same_person_photos()[0])
    assert isinstance(result.outcome, Accepted)


REAL_DISK_SCRIPT = textwrap.dedent(
    """
    import asyncio, json, os, subprocess, sys
    from pathlib import Path
    mount = Path(sys.argv[1])
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], check=True)
    from engine.facade import Engine
    from tests.faces_data import same_person_photos
    from tests.tiny_settings import tiny_settings

    async def main():
        data = mount / "data"
        engine = await Engine.open(tiny_settings(data))
        user = engine.pseudonym("telegram", 9)
        await engine.touch_user(user, "telegram")
        filler = mount / "filler"
        with open(filler, "wb") as f:  # fill the disk to ~16 KB free: the face crop (~300 KB) cannot fit
            try:
                while os.statvfs(mount).f_bavail * os.statvfs(mount).f_frsize > 16_384:
                    f.write(b"\\0" * 65536)
                    f.flush()
            except OSError:
                pass
        result = await engine.add_photo(user, same_person_photos()[0])
        blobs = [str(p) for p in (data / "blobs").rglob("*") if p.is_file()]
        count = await engine.photo_count(user)
        filler.unlink()
        again = await engine.add_photo(user, same_person_photos()[0])
        await engine.close()
        print(json.dumps({"code": getattr(result.outcome, "code", "accepted"), "count": count,
                          "blobs": blobs, "again": getattr(again.outcome, "code", "accepted")}))

    asyncio.run(main())
    """
)


@pytest.mark.skipif(not shutil.which("unshare") or sys.platform != "linux", reason="needs Linux unshare")
def test_a_really_full_disk_refuses_the_photo(tmp_path: Path) -> None:
    mount = tmp_path / "small"
    mount.mkdir()
    probe = subprocess.run(["unshare", "-rm", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip("user and mount namespaces are not available")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        ["unshare", "-rm", sys.executable, "-c", REAL_DISK_SCRIPT, str(mount)],
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    outcome = json.loads(done.stdout.strip().splitlines()[-1])
    assert outcome == {"code": "storage_full", "count": 0, "blobs": [], "again": "accepted"}
