"""Every deletion deadline fires, deletes exactly its artifact, survives restarts, and matches the policy text.

Time is moved with a FakeClock and `Engine.retention.run_due`; one test uses the real clock and
APScheduler. Jobs run on the tiny model with `Worker.run_once()`.
"""

from __future__ import annotations

import json
import time

import pytest

from bot.telegram_bot import TelegramMessenger
from bot.texts import Texts
from engine.clock import Clock, FakeClock
from engine.facade import Engine
from engine.retention import RetentionScheduler
from tests.retention_fixtures import HOUR, Harness, make_settings, same_person_photos, wait_for

RETENTION = {
    "LIKENESS_RETENTION_PHOTOS": "24h",
    "LIKENESS_RETENTION_MODEL": "7d",
    "LIKENESS_RETENTION_OUTPUTS": "6h",
    "LIKENESS_RETENTION_MESSAGES": "72h",
    "LIKENESS_RETENTION_JOBS": "12h",
}


pytestmark = pytest.mark.usefixtures("on_every_backend")


@pytest.fixture
async def bot(tmp_path):
    harness = await Harness.open(make_settings(tmp_path / "data", **RETENTION))
    yield harness
    await harness.close()


async def run_due(bot: Harness) -> dict[str, int]:
    return await bot.engine.retention.run_due(bot.app.delete_message)


async def test_photos_expire_at_their_deadline_when_training_never_succeeds(bot):
    alice, bob = bot.user("1001"), bot.user("1002")
    await bot.onboard(alice)
    bot.clock.advance(HOUR)
    await bot.onboard(bob)
    assert await bot.count("photos", alice) == 3 and len(bot.blob_files(alice)) == 3

    bot.clock.advance(23 * HOUR - 1)
    assert await run_due(bot) == {}
    assert await bot.count("photos", alice) == 3

    bot.clock.advance(1)
    assert await run_due(bot) == {"photo": 3}
    assert await bot.count("photos", alice) == 0
    assert bot.blob_files(alice) == set()
    assert await bot.deadline(alice, "photo") is None
    # Bob uploaded an hour later: untouched until his own deadline.
    assert await bot.count("photos", bob) == 3 and len(bot.blob_files(bob)) == 3
    bot.clock.advance(HOUR)
    assert await run_due(bot) == {"photo": 3}
    assert bot.blob_files(bob) == set()


async def test_photos_are_deleted_as_soon_as_training_succeeds(bot):
    alice, bob = bot.user("1001"), bot.user("1002")
    await bot.onboard(alice)
    await bot.onboard(bob)
    photo_blobs = bot.blob_files(alice)
    await bot.train(alice)

    assert await bot.count("photos", alice) == 0
    assert await bot.deadline(alice, "photo") is None
    assert not photo_blobs & bot.blob_files(alice)
    assert await bot.count("adapters", alice) == 1
    assert await bot.count("photos", bob) == 3 and len(bot.blob_files(bob)) == 3


async def test_model_expires_after_last_use_and_settings_shorten_it_at_once(bot):
    alice, bob = bot.user("1001"), bot.user("1002")
    for user in (alice, bob):
        await bot.onboard(user)
        await bot.train(user)
    trained_at = bot.clock.now()
    assert await bot.deadline(alice, "adapter") == trained_at + 7 * 24 * HOUR

    bot.clock.advance(2 * 24 * HOUR)
    await bot.generate(alice)  # a use moves the deadline
    used_at = bot.clock.now()
    assert await bot.deadline(alice, "adapter") == used_at + 7 * 24 * HOUR

    bot.clock.advance(5 * 24 * HOUR)  # Bob's original deadline: his model goes, Alice's stays
    assert (await run_due(bot)).get("adapter") == 1
    assert await bot.count("adapters", bob) == 0 and bot.blob_files(bob) == set()
    assert await bot.count("adapters", alice) == 1

    await bot.command(alice, "settings")
    assert "set:model_now" in [button.data for button in bot.recorder.buttons()]
    await bot.press(alice, "set:model_now")
    assert await bot.deadline(alice, "adapter") == used_at + HOUR  # already overdue: next run deletes it
    adapter = await bot.engine.adapter(alice.id)
    assert adapter["id"] in bot.blob_files(alice)
    assert await run_due(bot) == {"adapter": 1}
    assert await bot.engine.adapter(alice.id) is None
    assert adapter["id"] not in bot.blob_files(alice)


async def test_model_choice_applies_to_a_fresh_model_from_its_last_use(bot):
    alice = bot.user("1001")
    await bot.onboard(alice)
    await bot.train(alice)
    await bot.command(alice, "settings")
    await bot.press(alice, "set:model_now")
    assert await bot.deadline(alice, "adapter") == bot.clock.now() + HOUR
    bot.clock.advance(HOUR - 1)
    assert await run_due(bot) == {}
    bot.clock.advance(1)
    assert await run_due(bot) == {"adapter": 1}
    assert bot.blob_files(alice) == set()


async def test_undelivered_portraits_expire_and_delivered_ones_go_at_once(bot):
    alice, bob = bot.user("1001"), bot.user("1002")
    for user in (alice, bob):
        await bot.onboard(user)
        await bot.train(user)
    await bot.generate(alice)
    outputs = {row["id"] for row in await bot.engine.store.fetchall("SELECT id FROM outputs")}
    assert len(outputs) == 2 and outputs <= bot.blob_files(alice)

    bot.clock.advance(6 * HOUR - 1)
    assert "output" not in await run_due(bot)
    bot.clock.advance(1)
    assert (await run_due(bot))["output"] == 2
    assert await bot.count("outputs", alice) == 0 and not outputs & bot.blob_files(alice)

    await bot.generate(bob)
    assert await bot.count("outputs", bob) == 2
    await bot.deliver()
    assert [len(sent.reply.images) for sent in bot.recorder.sent if sent.reply.images] == [2]  # Bob's
    assert await bot.count("outputs", bob) == 0 and bot.blob_files(bob) == {
        (await bot.engine.adapter(bob.id))["id"]
    }
    assert await bot.deadline(bob, "output") is None
    assert await bot.count("adapters", bob) == 1 and await bot.count("adapters", alice) == 1


async def test_delivered_messages_are_deleted_at_the_telegram_cap(bot):
    alice, bob = bot.user("1001"), bot.user("1002")
    for user in (alice, bob):
        await bot.onboard(user)
        await bot.train(user)
        await bot.generate(user)
    await bot.deliver()
    with_deadline = await bot.engine.store.fetchall(
        "SELECT m.message_id FROM sent_messages m JOIN deadlines d ON d.kind='message' AND d.ref_id=m.id"
    )
    # each result delivery: its portraits, then the "another style" part
    portrait_messages = {
        i
        for sent in bot.recorder.sent
        if sent.reply.images or any(b.data == "styles" for row in sent.reply.buttons for b in row)
        for i in sent.ids
    }
    assert {row["message_id"] for row in with_deadline} == portrait_messages and len(portrait_messages) == 6
    sent_at = bot.clock.now()
    assert await bot.deadline(alice, "message") == sent_at + 47 * HOUR  # 72h asked, Telegram allows 48h

    bot.clock.advance(47 * HOUR - 1)
    assert "message" not in await run_due(bot)
    assert bot.recorder.deleted == []
    bot.clock.advance(1)
    assert (await run_due(bot))["message"] == 6
    assert set(bot.recorder.deleted) == portrait_messages
    assert await bot.count("sent_messages", alice, "kind='result'") == 1  # "model ready": no deadline
    assert await bot.count("sent_messages", alice, "kind='progress'") == 2


async def test_messages_deadline_is_not_capped_off_telegram(tmp_path):
    bot = await Harness.open(make_settings(tmp_path, **RETENTION), platform="discord")
    try:
        alice = bot.user("1001")
        await bot.onboard(alice)
        await bot.train(alice)
        await bot.generate(alice)
        await bot.deliver()
        assert await bot.deadline(alice, "message") == bot.clock.now() + 72 * HOUR
    finally:
        await bot.close()


async def test_pending_jobs_are_cancelled_at_their_deadline(bot):
    alice, bob = bot.user("1001"), bot.user("1002")
    await bot.onboard(alice)
    await bot.press(alice, "train")  # no worker runs: it stays queued
    bot.clock.advance(HOUR)
    await bot.onboard(bob)
    await bot.press(bob, "train")

    bot.clock.advance(11 * HOUR - 1)
    assert "job" not in await run_due(bot)
    bot.clock.advance(1)
    assert (await run_due(bot))["job"] == 1
    alice_job = await bot.engine.store.fetchone("SELECT state, error FROM jobs WHERE user_id=?", (alice.id,))
    bob_job = await bot.engine.store.fetchone("SELECT state FROM jobs WHERE user_id=?", (bob.id,))
    assert (alice_job["state"], alice_job["error"]) == ("cancelled", "expired")
    assert bob_job["state"] == "queued"
    assert await bot.run_jobs() == 1  # only Bob's job is left to run
    assert await bot.count("adapters", alice) == 0 and await bot.count("adapters", bob) == 1


# -- restarts ---------------------------------------------------------------------------------------------


async def test_overdue_deadlines_are_kept_before_anything_else_after_a_restart(tmp_path):
    settings = make_settings(tmp_path, **RETENTION)
    bot = await Harness.open(settings)
    clock = bot.clock
    alice, bob = bot.user("1001"), bot.user("1002")
    await bot.full_flow(alice)  # model, delivered messages
    await bot.onboard(bob)  # photos only
    await bot.press(bob, "train")  # a queued job, never run
    await bot.close()

    clock.advance(7 * 24 * HOUR + 1)  # while the bot is down, every deadline passes
    bot = await Harness.open(settings, clock)
    seen_at_start: dict[str, int] = {}

    async def snapshot() -> None:  # the front-end starts only after the overdue deletions
        row = await bot.engine.store.fetchone("SELECT COUNT(*) AS n FROM deadlines")
        seen_at_start["deadlines"] = row["n"]
        seen_at_start["files"] = sum(1 for p in (settings.data_dir / "blobs").rglob("*") if p.is_file())

    bot.recorder.on_start = snapshot
    try:
        await bot.app.start()
        assert seen_at_start == {"deadlines": 0, "files": 0}
        audit = await bot.engine.store.fetchall("SELECT detail FROM audit WHERE action='retention'")
        # only Bob's never-run job is cancelled: finished jobs no longer carry a deadline
        assert json.loads(audit[-1]["detail"]) == {
            "adapter": 1,
            "message": 3,
            "photo": 3,
            "job": 1,
        }  # 2 portraits + "another style"
        assert (
            len(bot.recorder.deleted) == 3
        )  # the delivered portraits and their button, deleted from the chat
        assert await bot.count("photos", bob) == 0 and await bot.count("adapters", alice) == 0
        assert (await bot.engine.store.fetchone("SELECT state FROM jobs WHERE user_id=?", (bob.id,)))[
            0
        ] == "cancelled"
    finally:
        await bot.close()


async def test_a_future_deadline_is_scheduled_and_fires(tmp_path):
    settings = make_settings(tmp_path, LIKENESS_RETENTION_PHOTOS="3s")
    bot = await Harness.open(settings, Clock())
    scheduler = RetentionScheduler(
        bot.engine.retention, settings.retention.sweep_interval, bot.app.delete_message
    )
    try:
        alice = bot.user("1001")
        await bot.onboard(alice, same_person_photos()[:1])
        assert await bot.count("photos", alice) == 1
        assert await scheduler.start() == {}  # not due yet
        job = scheduler.scheduler.get_job("next-deadline")
        assert job is not None
        assert abs(job.next_run_time.timestamp() - await bot.deadline(alice, "photo")) < 0.01
        assert await bot.deadline(alice, "photo") > time.time()

        async def gone() -> bool:  # the run is over once it has recorded what it deleted
            audited = await bot.engine.store.fetchone("SELECT 1 FROM audit WHERE action='retention'")
            return await bot.count("photos", alice) == 0 and audited is not None

        await wait_for(gone, timeout=20)
        assert bot.blob_files(alice) == set()
        audit = await bot.engine.store.fetchall("SELECT detail FROM audit WHERE action='retention'")
        assert [json.loads(row["detail"]) for row in audit] == [{"photo": 1}]
    finally:
        scheduler.stop()
        await bot.close()


# -- the schedule users read ------------------------------------------------------------------------------


async def test_policy_texts_follow_the_settings(tmp_path):
    default = Texts(make_settings(tmp_path))
    short = Texts(make_settings(tmp_path, LIKENESS_RETENTION_PHOTOS="15m"))
    assert "at the latest after 1 day" in default.policy_summary()
    assert "at the latest after 15 minutes" in short.policy_summary()
    assert "at the latest after 15 minutes" in short.policy_full()
    assert short.policy_version != default.policy_version
    messages = Texts(make_settings(tmp_path, LIKENESS_RETENTION_MESSAGES="72h"))
    messages.cap_messages("telegram", TelegramMessenger.message_lifetime)  # as the App does at start
    assert "from the chat after 47 hours" in messages.schedule("telegram")
    assert "from the chat after 3 days" in messages.schedule("discord")


async def test_what_users_read_is_what_is_enforced(tmp_path):
    settings = make_settings(tmp_path, LIKENESS_RETENTION_PHOTOS="15m")
    bot = await Harness.open(settings)
    try:
        alice = bot.user("1001")
        consent_text = (await bot.command(alice, "start")).text
        assert "at the latest after 15 minutes" in consent_text
        assert "at the latest after 15 minutes" in (await bot.command(alice, "privacy")).text
        await bot.press(alice, "consent:yes")
        await bot.send_photos(alice, same_person_photos()[:1])
        status = (await bot.command(alice, "status")).text
        assert "at the latest after 15 minutes" in status
        uploaded = bot.clock.now()
        assert await bot.deadline(alice, "photo") == uploaded + 15 * 60
        version = (await bot.engine.consent(alice.id))["policy_version"]
        assert version == bot.app.conversation.t.policy_version
    finally:
        await bot.close()

    # The operator changes the schedule: the policy version changes and consent is asked again.
    bot = await Harness.open(make_settings(tmp_path, LIKENESS_RETENTION_PHOTOS="30m"), bot.clock)
    try:
        alice = bot.user("1001")
        assert bot.app.conversation.t.policy_version != version
        reply = await bot.send_photos(alice, same_person_photos()[1:2])
        assert alice.downloads == []
        assert "The privacy policy has changed" in reply.text and "30 minutes" in reply.text
    finally:
        await bot.close()


async def test_a_failing_message_delete_does_not_hold_up_other_deadlines(tmp_path):
    clock = FakeClock()
    engine = await Engine.open(make_settings(tmp_path), clock)
    try:
        await engine.tables.users.ensure("aa11", "telegram", None)
        await engine.record_message("aa11", "42", "result")
        message = await engine.store.fetchone("SELECT id FROM sent_messages")
        await engine.retention.set_deadline("aa11", "message", message["id"], clock.now() + 1)
        job_id = await engine.queue.enqueue("aa11", "train")
        await engine.retention.set_deadline("aa11", "job", job_id, clock.now() + 1)
        clock.advance(2)

        async def platform_down(user_id: str, row_id: str) -> bool:
            raise ConnectionError("the platform is unreachable")

        assert await engine.retention.run_due(platform_down) == {"job": 1}
        assert (await engine.queue.get(job_id)).state == "cancelled"
        kept = await engine.store.fetchone("SELECT 1 FROM deadlines WHERE kind='message'")
        assert kept is not None  # tried again at the next run
    finally:
        await engine.close()
