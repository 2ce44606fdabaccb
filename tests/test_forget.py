"""/forget is total, works in any state and twice; consent withdrawal is one button; /mydata stays in memory.

"Nothing left" is checked on the bytes: every file under the data dir (database, WAL, shm, blobs, key
store) is scanned for the user's pseudonym, platform id, images, fingerprints and sealed values.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import shutil
from datetime import UTC, datetime
from pathlib import Path

import pytest

from engine import worker
from engine.clock import Clock
from engine.vault import KeyMissing, Vault, load_or_create_master_key
from tests.retention_fixtures import (
    HOUR,
    Harness,
    User,
    files_under,
    make_settings,
    same_person_photos,
    tiny_models,
    unzip,
    wait_for,
)

IMAGE_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff")


pytestmark = pytest.mark.usefixtures("on_every_backend")


@pytest.fixture
async def bot(tmp_path):
    harness = await Harness.open(make_settings(tmp_path / "data", LIKENESS_RETENTION_MESSAGES="72h"))
    yield harness
    await harness.close()


def traces(data_dir: Path, user: User, needles: list[bytes] = ()) -> list[str]:
    """Every place under `data_dir` where something of the user is found (empty: nothing)."""
    found = []
    markers = [user.id.encode(), user.platform_id.encode(), *IMAGE_MAGIC, *needles]
    for path, data in files_under(data_dir).items():
        if user.id in str(path.relative_to(data_dir)):
            found.append(f"path {path}")
        found += [f"{marker[:12]!r} in {path.name}" for marker in markers if marker in data]
    found += [f"folder {p}" for p in data_dir.rglob("*") if p.is_dir() and user.id in p.name]
    return found


def slices(data: bytes, width: int = 48) -> list[bytes]:
    """Distinctive pieces of a value: its start, middle and end."""
    middle = len(data) // 2
    return [data[:width], data[middle : middle + width], data[-width:]]


async def assert_gone(bot: Harness, user: User, needles: list[bytes] = ()) -> None:
    assert set((await bot.rows(user)).values()) == {0}
    assert not bot.engine.vault.keys.has_key(user.id)
    assert traces(bot.data_dir, user, needles) == []


async def forget(bot: Harness, user: User) -> str:
    confirm = await bot.command(user, "forget")
    assert [b.data for row in confirm.buttons for b in row] == ["forget:yes", "forget:no"]
    return (await bot.press(user, "forget:yes")).text


async def test_forget_after_the_whole_flow_leaves_nothing(bot):
    alice, bob = bot.user("tg-7788990011"), bot.user("tg-5566443322")
    await bot.onboard(bob)
    await bot.onboard(alice)
    engine = bot.engine
    needles: list[bytes] = []
    for row in await engine.store.fetchall("SELECT id, fingerprint FROM photos WHERE user_id=?", (alice.id,)):
        needles += slices(row["fingerprint"])  # sealed, in the database
        needles += slices(engine.vault.open(alice.id, "fingerprint", row["id"], row["fingerprint"]))
    needles += slices((await engine.tables.users.get(alice.id))["chat"])
    for photo_id, crop in await engine.photos(alice.id):
        needles += slices(crop) + slices((bot.data_dir / "blobs" / alice.id / f"{photo_id}.bin").read_bytes())
    for data in same_person_photos():
        needles += slices(data)

    await bot.train(alice)
    adapter = await engine.adapter(alice.id)
    needles += slices((bot.data_dir / "blobs" / alice.id / f"{adapter['id']}.bin").read_bytes())
    await bot.generate(alice)
    await bot.deliver()
    portraits = [image for sent in bot.recorder.sent for image in sent.reply.images]
    assert len(portraits) == 2
    for image in portraits:
        needles += slices(image)
    assert await engine.store.fetchone("SELECT 1 FROM sent_messages WHERE user_id=?", (alice.id,))
    assert traces(bot.data_dir, alice)  # the scan does see the user before /forget

    backup = bot.data_dir.parent / "backup"
    shutil.copytree(bot.data_dir, backup)
    receipt = await forget(bot, alice)

    assert "Receipt" in receipt
    for line in (
        "photos: 0",
        "models: 1",
        "portraits: 0",
        "jobs: 2",
        "consent records: 1",
        "chat messages: 6",
    ):
        assert f"• {line}" in receipt
    assert len(bot.recorder.deleted) == 6  # 2 progress, "model ready", 2 portraits, "another style"
    await assert_gone(bot, alice, needles)
    local = not bot.app.settings.database_url  # PostgreSQL: no database or key file in the data dir
    if local:
        assert (bot.data_dir / "likeness.sqlite3-wal").stat().st_size == 0

    # Bob is untouched.
    assert await bot.count("photos", bob) == 3
    assert len(await engine.photos(bob.id)) == 3
    if not local:
        return  # the key-store backup below is a file copy; tests/test_backends.py covers PostgreSQL's

    # The backup taken before /forget: readable with its own key store, noise with the live one.
    master = load_or_create_master_key("", bot.data_dir)
    old = Vault(backup, master)
    assert old.get(alice.id, "adapter", adapter["id"])
    old.close()
    shutil.copy(bot.data_dir / "keys" / "keys.sqlite3", backup / "keys" / "keys.sqlite3")
    live = Vault(backup, master)
    try:
        with pytest.raises(KeyMissing):
            live.get(alice.id, "adapter", adapter["id"])
        for blob in (backup / "blobs" / alice.id).iterdir():
            with pytest.raises(KeyMissing):
                live.get(alice.id, "photo", blob.stem)
        assert live.get(bob.id, "photo", (await engine.photos(bob.id))[0][0])
    finally:
        live.close()


async def test_forget_mid_upload(bot):
    alice = bot.user("2001")
    await bot.onboard(alice, same_person_photos()[:1])
    assert await bot.count("photos", alice) == 1
    receipt = await forget(bot, alice)
    assert "• photos: 1" in receipt and "• files: 1" in receipt
    await assert_gone(bot, alice, slices(same_person_photos()[0]))


async def test_forget_mid_training_stops_the_job(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(worker, "HEARTBEAT_SECONDS", 0.05)
    bot = await Harness.open(make_settings(tmp_path), Clock())
    models = copy.copy(tiny_models())
    models.train_steps = 100_000  # would take hours: only the cancellation ends it
    bot.worker.models = models
    try:
        alice = bot.user("2002")
        await bot.onboard(alice)
        await bot.press(alice, "train")
        running = asyncio.create_task(bot.worker.run_once())

        async def training() -> bool:
            row = await bot.engine.store.fetchone(
                "SELECT state, progress FROM jobs WHERE user_id=?", (alice.id,)
            )
            return row["state"] == "running" and row["progress"] > 0.02

        await wait_for(training, timeout=30)
        with caplog.at_level(logging.INFO, logger="engine.worker"):
            receipt = await forget(bot, alice)
            assert await asyncio.wait_for(running, 60) is True
        assert "• jobs: 1" in receipt and "• models: 0" in receipt
        assert "stopped: cancelled or taken over" in caplog.text
        assert await bot.engine.store.fetchone("SELECT 1 FROM adapters") is None
        await assert_gone(bot, alice)
    finally:
        await bot.close()


async def test_forget_after_everything_expired_and_twice_in_a_row(bot):
    alice = bot.user("2003")
    await bot.full_flow(alice)
    bot.clock.advance(8 * 24 * HOUR)
    counts = await bot.engine.retention.run_due(bot.app.delete_message)
    assert counts["adapter"] == 1 and counts["message"] == 3  # 2 portraits and the "another style" part
    assert bot.blob_files(alice) == set()

    first = await forget(bot, alice)
    for line in ("photos: 0", "models: 0", "portraits: 0", "files: 0", "consent records: 1"):
        assert f"• {line}" in first
    await assert_gone(bot, alice)

    second = await forget(bot, alice)
    assert "Receipt" in second
    for line in ("photos: 0", "models: 0", "jobs: 0", "consent records: 0", "records: 0", "chat messages: 0"):
        assert f"• {line}" in second
    await assert_gone(bot, alice)


async def test_withdrawal_is_one_command_and_one_button(bot):
    alice = bot.user("2004")
    await bot.onboard(alice, same_person_photos()[:1])
    assert alice.downloads == [0]
    await forget(bot, alice)
    assert await bot.engine.consent(alice.id) is None

    reply = await bot.send_photos(alice, same_person_photos()[1:2])
    assert alice.downloads == [0]  # the new photo was not downloaded
    assert "consent" in reply.text and any(
        b.data.startswith("consent:yes-") for row in reply.buttons for b in row
    )
    assert await bot.engine.is_known(alice.id) is False


async def test_mydata_sends_a_summary_and_the_photos_from_memory(bot):
    alice = bot.user("2005")
    await bot.onboard(alice)
    await bot.press(alice, "train")  # a queued job
    before = {path: len(data) for path, data in files_under(bot.data_dir).items()}

    reply = await bot.command(alice, "mydata")
    files = dict(reply.files)
    assert set(files) == {"likeness-data.json", "likeness-files.zip"}
    summary = json.loads(files["likeness-data.json"])
    assert [c["policy_version"] for c in summary["consents"]] == [bot.app.conversation.t.policy_version]
    assert len(summary["photos"]) == 3
    assert sorted(d["kind"] for d in summary["deadlines"]) == ["job", "photo", "photo", "photo"]
    assert [(j["kind"], j["state"]) for j in summary["jobs"]] == [("train", "queued")]
    assert alice.id not in files["likeness-data.json"].decode()
    # Readable: a UTC date beside every epoch value.
    consent = summary["consents"][0]
    assert consent["given_at_utc"] == datetime.fromtimestamp(consent["given_at"], UTC).strftime(
        "%Y-%m-%d %H:%M:%S UTC"
    )
    assert consent["withdrawn_at"] is None and "withdrawn_at_utc" not in consent
    assert all(d["due_at_utc"].endswith(" UTC") for d in summary["deadlines"])
    assert alice.platform_id not in files["likeness-data.json"].decode()

    archive = unzip(files["likeness-files.zip"])
    stored = dict(await bot.engine.photos(alice.id))
    assert archive == {f"photos/{photo_id}.png": data for photo_id, data in stored.items()}
    assert all(data.startswith(IMAGE_MAGIC[0]) for data in archive.values())
    after = {path: len(data) for path, data in files_under(bot.data_dir).items()}
    assert set(after) == set(before)  # nothing written to disk (the database may only grow its log)
    assert not [p for p in after if p.suffix in {".png", ".zip", ".json", ".tmp"}]


async def test_mydata_for_a_stranger_says_nothing_is_stored(bot):
    reply = await bot.command(bot.user("2006"), "mydata")
    assert reply.files == () and reply.text == bot.app.conversation.t("mydata_empty")


async def test_forget_while_the_worker_saves_the_model_leaves_no_key(bot):
    """/forget lands between the end of training and the save: the save must not bring the user back."""
    alice = bot.user("2007")
    await bot.onboard(alice)
    await bot.press(alice, "train")
    loop, engine = asyncio.get_running_loop(), bot.engine
    put = engine.vault.put

    def put_after_forget(owner: str, kind: str, blob_id: str, data: bytes) -> int:
        if kind == "adapter":  # runs in the worker's thread: erase the user first, then write
            asyncio.run_coroutine_threadsafe(engine.forget(owner), loop).result()
        return put(owner, kind, blob_id, data)

    engine.vault.put = put_after_forget
    assert await bot.worker.run_once()
    assert await engine.store.fetchone("SELECT 1 FROM adapters") is None
    await assert_gone(bot, alice)
