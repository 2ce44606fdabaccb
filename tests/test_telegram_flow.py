"""End to end over real HTTP: the real python-telegram-bot Application (`App.create` with a Telegram token)
long-polls `tests/fake_telegram.py` on 127.0.0.1, with the tiny model on CPU in the embedded worker.

The whole flow (/start → consent → album → train → style → results) runs once, in the module fixture;
the tests check what it recorded and then drive the same running bot with other users.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio

from bot.app import App
from bot.delivery import deliver_pending
from bot.flow import COMMANDS
from engine.provenance import verify_image
from engine.settings import Settings
from tests import faces_data as fd
from tests.certs import make_test_chain
from tests.fake_telegram import FakeTelegram, FakeUser, SentMessage
from tests.tiny_settings import tiny_settings

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(600)]

ALICE, BOB = 1001, 1002  # Alice runs the whole flow; Bob tries to cancel her job
SLOW = 240.0  # seconds allowed for model work on a busy 2-core CPU (an upper bound, never a measurement)


def settings_for(fake: FakeTelegram, data_dir: Path) -> Settings:
    certs = data_dir.parent / f"c2pa-{data_dir.name}"  # outside the data dir: not user data
    certs.mkdir(exist_ok=True)
    chain = make_test_chain(certs)
    return tiny_settings(
        data_dir,
        LIKENESS_TELEGRAM_TOKEN=fake.token,
        LIKENESS_TELEGRAM_API_URL=fake.base_url,
        LIKENESS_PROVENANCE_C2PA_CERT=str(chain.cert),
        LIKENESS_PROVENANCE_C2PA_KEY=str(chain.key),
    )


def same_person_photos() -> list[bytes]:
    return list(fd.same_person_photos())


def button_data(message: SentMessage, prefix: str) -> list[str]:
    return [b["callback_data"] for b in message.buttons if b.get("callback_data", "").startswith(prefix)]


def documents(fake: FakeTelegram, chat_id: int) -> list[SentMessage]:
    return [m for m in fake.messages(chat_id) if m.document is not None]


async def answer_to(fake: FakeTelegram, query_id: str) -> dict:
    """The bot's answerCallbackQuery for one press."""
    return await fake.wait_for(
        lambda f: next((a for a in f.answered_callbacks if a["callback_query_id"] == query_id), None)
    )


@dataclass
class World:
    fake: FakeTelegram
    settings: Settings
    app: App
    alice: FakeUser
    consent: SentMessage
    summary: SentMessage
    queued: SentMessage
    job_id: str
    forged_answer: dict
    forged_job_state: str
    garbage_reply: SentMessage
    trained: SentMessage
    results: list[SentMessage]
    again: SentMessage


async def onboard(fake: FakeTelegram, user: FakeUser) -> SentMessage:
    """/start and agree; returns the consent message."""
    await user.send_text("/start")
    consent = await fake.wait_for_message(user.id, "Do you agree?")
    await user.press(consent, "consent:yes")
    await fake.wait_for_message(user.id, "Thank you!")
    return consent


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def world(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
    fake = FakeTelegram()
    await fake.start()
    settings = settings_for(fake, tmp_path_factory.mktemp("likeness"))
    app = await App.create(settings)
    await app.start()
    state: World | None = None
    try:
        alice, bob = fake.user(ALICE), fake.user(BOB)
        consent = await onboard(fake, alice)

        await alice.send_album(same_person_photos())
        summary = await fake.wait_for_message(ALICE, "photos so far")
        await alice.press(summary, "train")
        queued = await fake.wait_for_message(ALICE, "Training queued")
        (cancel,) = button_data(queued, "cancel:")
        job_id = cancel.removeprefix("cancel:")

        # Bob forges Alice's cancel button, then sends garbage: neither may touch anything.
        forged = await bob.forge_callback(f"cancel:{job_id}", message_id=1)
        forged_answer = await answer_to(fake, forged)
        await bob.forge_callback("bogus:123", message_id=1)
        garbage_reply = await fake.wait_for_message(BOB, "expired")

        trained = await fake.wait_for_message(ALICE, "model is ready", timeout=SLOW)
        job = await app.engine.queue.get(job_id)
        await alice.press(trained, button_data(trained, "style:")[0])
        await fake.wait_for_message(ALICE, "portraits coming up")
        again = await fake.wait_for_message(ALICE, "⬆️", timeout=SLOW)
        state = World(
            fake=fake,
            settings=settings,
            app=app,
            alice=alice,
            consent=consent,
            summary=summary,
            queued=queued,
            job_id=job_id,
            forged_answer=forged_answer,
            forged_job_state=job.state,
            garbage_reply=garbage_reply,
            trained=trained,
            results=documents(fake, ALICE),
            again=again,
        )
        yield state
    finally:
        await (state.app if state else app).stop()  # the restart test replaces the app
        await fake.stop()


# -- 1. the whole flow ----------------------------------------------------------------------------------
async def test_consent_is_asked_first_with_buttons(world: World) -> None:
    assert "Do you agree?" in world.consent.text
    assert "/forget" in world.consent.text
    agree = f"consent:yes-{world.app.conversation.t.policy_version}"  # names the text that was shown
    assert button_data(world.consent, "consent:") == [agree, "consent:no"]


async def test_an_album_is_answered_once_with_a_summary_and_a_train_button(world: World) -> None:
    summaries = [m for m in world.fake.messages(ALICE) if "photos so far" in (m.text or "")]
    assert summaries == [world.summary]
    assert [line for line in world.summary.text.splitlines() if "looks good" in line] == [
        "✅ Photo 1/3: looks good (1 saved).",
        "✅ Photo 2/3: looks good (2 saved).",
        "✅ Photo 3/3: looks good (3 saved).",
    ]
    assert "3 of at least 3 photos" in world.summary.text
    assert button_data(world.summary, "train") == ["train"]
    assert len(world.fake.downloads) >= 3  # photos are fetched only after consent


async def test_training_shows_the_queue_then_edits_progress_in_place(world: World) -> None:
    assert world.queued.edits, "the progress message was never edited"
    first = world.queued.edits[0]["text"]
    assert first.startswith("Training queued.") and "about" in first  # position and ETA
    assert world.queued.text.endswith("100%")  # the same message, edited to done
    assert world.fake.message(ALICE, world.queued.message_id) is world.queued


async def test_model_ready_offers_styles(world: World) -> None:
    styles = button_data(world.trained, "style:")
    assert {f"style:{key}" for key in world.app.engine.presets} == set(styles)
    assert "photos have been deleted" in world.trained.text
    assert await world.app.engine.photo_count(world.app.engine.pseudonym("telegram", ALICE)) == 0


async def test_delivered_files_carry_every_ai_generated_mark(world: World) -> None:
    """Read back what the platform received: watermark (from the pixels), IPTC/XMP and C2PA."""
    for message in world.results:
        report = verify_image(message.document)
        assert report.watermark and report.watermark_bit_errors is not None
        assert report.iptc_xmp
        assert report.c2pa and report.c2pa_valid and report.c2pa_ai_generated
        assert "AI-generated" in (message.caption or world.results[0].caption)


async def test_each_portraits_likeness_and_the_gates_note_are_shown(world: World) -> None:
    """The tiny model draws no face: each portrait says so, and the note says none reached the minimum."""
    caption = world.results[0].caption
    assert "1: no face found · 2: no face found" in caption
    minimum = world.settings.engine.min_likeness
    assert (
        f"Only 0 of these 2 look like you as much as they should (a likeness of {minimum}% or more)"
        in caption
    )
    assert "more varied photos" in caption


async def test_results_arrive_as_protected_marked_files_with_another_style(world: World) -> None:
    results = world.results
    assert len(results) == world.settings.engine.images_per_request == 2
    assert all(m.protect_content for m in results)
    assert all(m.document.startswith(b"\x89PNG") for m in results)
    assert all(m.document_name.endswith(".png") for m in results)
    assert "AI-generated" in results[0].caption
    assert len({m.media_group_id for m in results}) == 1
    assert button_data(world.again, "styles") == ["styles"]
    assert "Another style" in world.again.button_texts


async def test_the_command_menu_is_set_in_every_language(world: World) -> None:
    menus = {language: commands for (_, language), commands in world.fake.commands.items()}
    assert set(menus) == {"", *world.app.conversation.t.languages} - {"en"}  # "": the default, English
    for commands in menus.values():
        assert [c["command"] for c in commands] == list(COMMANDS)
    assert {"start", "mydata", "settings", "forget", "privacy", "language"} <= set(COMMANDS)
    assert menus[""][0]["description"] == "What this bot does and how your data is handled"
    assert menus["es"][0]["description"] == "Qué hace este bot y cómo se tratan tus datos"
    assert menus["uk"][-1]["description"] == "Список команд"


# -- 5. forged and garbage callbacks --------------------------------------------------------------------
async def test_a_forged_cancel_for_another_users_job_is_refused(world: World) -> None:
    assert "not for you" in world.forged_answer.get("text", "")
    assert world.forged_job_state == "done"  # Alice's training ran to the end
    assert world.trained  # and she got her model
    bob_sees = [m.text for m in world.fake.messages(BOB)]
    assert not any("Stopped" in (text or "") for text in bob_sees)


async def test_garbage_callback_data_expires_and_changes_nothing(world: World) -> None:
    assert world.garbage_reply.text == "That button has expired."
    bob = world.app.engine.pseudonym("telegram", BOB)
    assert await world.app.engine.is_known(bob) is False
    assert [m.text for m in world.fake.messages(BOB)] == [world.garbage_reply.text]


async def test_a_press_on_another_users_message_only_gets_a_short_answer(world: World) -> None:
    """Harry could train (consent and photos): his press on Gina's Train button must change nothing."""
    fake, engine = world.fake, world.app.engine
    gina, harry = fake.user(1008), fake.user(1009)
    summaries = {}
    for user in (gina, harry):
        await onboard(fake, user)
        await user.send_album(same_person_photos())
        summaries[user.id] = await fake.wait_for_message(user.id, "photos so far")
    summary = summaries[gina.id]
    assert button_data(summary, "train") == ["train"]

    def chat(user_id: int) -> list[tuple[int, str | None, int]]:
        return [(m.message_id, m.text, len(m.edits)) for m in fake.messages(user_id)]

    before = {user.id: chat(user.id) for user in (gina, harry)}
    query = await harry.press(summary, "train")
    assert (await answer_to(fake, query)).get("text") == "That button is not for you."
    await asyncio.sleep(0.5)  # anything the bot would still write lands by now
    for user in (gina, harry):
        assert chat(user.id) == before[user.id]
        user_id = engine.pseudonym("telegram", user.id)
        status = await engine.status(user_id, "telegram", world.app.conversation.t.policy_versions)
        assert status.jobs == [] and status.photos == 3
    assert len([a for a in fake.answered_callbacks if a["callback_query_id"] == query]) == 1


# -- 6. a blocked user and a restart with a delivery in the outbox --------------------------------------
async def test_a_pending_delivery_survives_a_block_and_a_restart_and_is_sent_once(world: World) -> None:
    fake, alice, engine = world.fake, world.alice, world.app.engine
    user_id = engine.pseudonym("telegram", ALICE)
    before = len(documents(fake, ALICE))
    alice.block()  # every send to Alice now fails: her portraits stay in the outbox
    stills = [d for d in button_data(world.trained, "style:") if not engine.presets[d[6:]].video]
    await alice.press(world.trained, stills[-1])
    await fake.wait_for(lambda f: any(e[0] == "sendMediaGroup" and e[1] == 403 for e in f.errors), SLOW)
    for _ in range(100):  # the failed send is recorded right after the platform refused it
        stuck = await engine.store.fetchall(
            "SELECT state, attempts FROM deliveries WHERE user_id=? AND state='pending'", (user_id,)
        )
        if stuck and stuck[0]["attempts"] >= 1:
            break
        await asyncio.sleep(0.1)
    assert len(stuck) == 1 and stuck[0]["attempts"] >= 1  # kept, and retried with backoff

    # Alice's stuck delivery must not hold up anyone else's.
    henry = fake.user(1007)
    await onboard(fake, henry)
    await henry.send_album(same_person_photos())
    await henry.press(await fake.wait_for_message(henry.id, "photos so far"), "train")
    await fake.wait_for_message(henry.id, "model is ready", timeout=SLOW)

    await world.app.stop()
    alice.unblock()
    world.app = await App.create(world.settings, models=world.app.worker.models)
    await world.app.start()
    engine = world.app.engine
    await fake.wait_for(lambda f: len(documents(f, ALICE)) > before, SLOW)
    await fake.wait_for_message(ALICE, "⬆️", after=world.again.message_id)
    for _ in range(100):  # the send is recorded right after the platform accepted it
        if not await engine.pending_deliveries("telegram"):
            break
        await asyncio.sleep(0.1)
    assert await engine.pending_deliveries("telegram") == []
    assert await deliver_pending(world.app.conversation, "telegram") == 0  # nothing left to resend

    new = documents(fake, ALICE)[before:]
    assert len(new) == world.settings.engine.images_per_request
    assert len({m.media_group_id for m in new}) == 1  # one successful sendMediaGroup
    recorded = set(await engine.messages(user_id))
    assert {str(m.message_id) for m in documents(fake, ALICE)} <= recorded  # for /forget


# -- 2, 3. photos are never downloaded without consent or outside a private chat -------------------------
async def test_a_photo_in_a_group_is_never_downloaded(world: World) -> None:
    fake = world.fake
    group = fake.group(-5001)
    photo = await group.send_photo(world.alice, same_person_photos()[0])  # Alice has consented
    reply = await fake.wait_for_message(group.id, "private chat")
    assert reply.text == "I never handle photos in groups. Talk to me in a private chat to make portraits."
    assert_never_fetched(fake, photo)


async def test_a_photo_before_consent_is_not_downloaded_and_consent_is_asked(world: World) -> None:
    fake, dave = world.fake, world.fake.user(1004)
    photo = await dave.send_photo(same_person_photos()[0])
    reply = await fake.wait_for_message(dave.id, "I need your consent")
    assert "I have not downloaded this one" in reply.text
    assert [data[:12] for data in button_data(reply, "consent:")] == ["consent:yes-", "consent:no"]
    assert_never_fetched(fake, photo)


def assert_never_fetched(fake: FakeTelegram, message: SentMessage) -> None:
    files = [size["file_id"] for size in message.photo_sizes or []]
    files += [message.document_json["file_id"]] if message.document_json else []
    asked = {call.get("file_id") for call in fake.calls_to("getFile")}
    assert files and not asked & set(files)
    assert not {fake.file(file_id).file_path for file_id in files} & set(fake.downloads)


# -- 4. bad files ---------------------------------------------------------------------------------------
async def test_bad_files_are_refused_with_a_reason_and_not_counted(world: World) -> None:
    fake, erin = world.fake, world.fake.user(1005)
    await onboard(fake, erin)
    engine, user_id = world.app.engine, world.app.engine.pseudonym("telegram", erin.id)

    await erin.send_document(b"%PDF-1.4\n1 0 obj << >> endobj\n%%EOF\n", "me.jpg", "image/jpeg")
    reply = await fake.wait_for_message(erin.id, "Photo 1")
    assert "❌ Photo 1" in reply.text and "This is not a supported image." in reply.text
    assert "0 of at least 3" in reply.text

    huge = await erin.send_document(b"\xff\xd8\xff" + bytes(21 * 1024 * 1024), "big.jpg", "image/jpeg")
    reply = await fake.wait_for_message(erin.id, "Photo 1", after=reply.message_id)
    assert "The file is too big (limit 20 MB)." in reply.text
    assert "0 of at least 3" in reply.text
    assert_never_fetched(fake, huge)

    await erin.send_photo(fd.encode(fd.coffee(), quality=90))
    reply = await fake.wait_for_message(erin.id, "Photo 1", after=reply.message_id)
    assert "I could not find a face." in reply.text
    assert "0 of at least 3" in reply.text
    assert await engine.photo_count(user_id) == 0


# -- 7. flood control -----------------------------------------------------------------------------------
async def test_a_429_on_send_message_is_retried_and_the_reply_arrives(world: World) -> None:
    fake, frank = world.fake, world.fake.user(1006)
    fake.fail_next("sendMessage", status=429, retry_after=1)
    await frank.send_text("/help")
    reply = await fake.wait_for_message(frank.id, "Commands:")
    assert ("sendMessage", 429) in fake.rejected
    help_calls = [c for c in fake.calls_to("sendMessage") if c["chat_id"] == frank.id]
    assert len(help_calls) == 2  # the refused one, then the retry
    assert [m.message_id for m in fake.messages(frank.id)] == [reply.message_id]


# -- 8. commands and /forget ----------------------------------------------------------------------------
async def test_status_help_and_privacy_answer(world: World) -> None:
    fake, alice = world.fake, world.alice
    await alice.send_text("/status")
    status = await fake.wait_for_message(ALICE, "What is stored about you")
    assert "• Consent: given" in status.text
    assert "• Photos: none" in status.text  # deleted once the model was trained
    assert "• Model: 1 model, deleted " in status.text
    assert "• Portraits waiting to be sent: none" in status.text  # deleted once delivered
    await alice.send_text("/help")
    assert "/forget" in (await fake.wait_for_message(ALICE, "Commands:")).text
    await alice.send_text("/privacy")
    privacy = await fake.wait_for_message(ALICE, "Privacy policy (version")
    assert "AES-256-GCM" in privacy.text


async def test_forget_deletes_everything_and_the_delivered_messages(world: World) -> None:
    fake, alice, engine = world.fake, world.alice, world.app.engine
    user_id = engine.pseudonym("telegram", ALICE)
    delivered = {(ALICE, m.message_id) for m in documents(fake, ALICE)}
    assert delivered
    await alice.send_text("/forget")
    confirm = await fake.wait_for_message(ALICE, "Continue?")
    await alice.press(confirm, "forget:yes")
    receipt = await fake.wait_for_message(ALICE, "Everything is deleted")
    assert "Receipt " in receipt.text
    assert delivered <= fake.deleted
    assert documents(fake, ALICE) == []
    assert (ALICE, world.queued.message_id) in fake.deleted  # the progress message too
    assert f"• chat messages: {sum(chat == ALICE for chat, _ in fake.deleted)}" in receipt.text
    assert await engine.is_known(user_id) is False
    assert await engine.messages(user_id) == []
