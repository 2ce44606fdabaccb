"""The whole conversation through the Discord front-end: a real discord.py client (the bot's own App) against
tests/fake_discord.py over real HTTP and a real websocket, with the real engine on a tiny model."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import discord
import pytest

from bot.app import App
from bot.discord_bot import DiscordFrontend, DiscordSettings, split_text
from bot.flow import COMMANDS
from engine.settings import Settings
from tests import faces_data as fd
from tests.fake_discord import FakeDiscord, FakeDiscordUser, FakeMessage, serving
from tests.fake_telegram import FakeTelegram
from tests.tiny_settings import tiny_settings

JPEG = "image/jpeg"
T = TypeVar("T")


@pytest.fixture
async def fake() -> AsyncIterator[FakeDiscord]:
    async with serving() as server:
        yield server


@pytest.fixture(scope="module")
def photos() -> list[tuple[str, bytes, str]]:
    """Three photos of one person that pass intake."""
    return [(f"me-{n}.jpg", data, JPEG) for n, data in enumerate(fd.same_person_photos())]


def make_settings(data_dir: Path, fake: FakeDiscord, telegram: FakeTelegram | None = None) -> Settings:
    return tiny_settings(
        data_dir,
        LIKENESS_TELEGRAM_TOKEN=telegram.token if telegram else "",
        LIKENESS_TELEGRAM_API_URL=telegram.base_url if telegram else "https://api.telegram.org",
        LIKENESS_DISCORD_TOKEN=fake.token,
        LIKENESS_DISCORD_API_URL=fake.api_url,
    )


@contextlib.asynccontextmanager
async def running(
    settings: Settings, with_worker: bool = False, intents: discord.Intents | None = None
) -> AsyncIterator[App]:
    app = await App.create(settings, with_worker=with_worker)
    if intents is not None:
        app.frontends.clear()
        options = settings.platform("discord").read(DiscordSettings)
        app.add_frontend(DiscordFrontend(options, app.conversation, intents=intents))
    await app.start()
    try:
        yield app
    finally:
        await app.stop()


async def eventually(read: Callable[[], Awaitable[T]], check: Callable[[T], bool], timeout: float = 30) -> T:
    """Re-read the bot's own state until `check` holds (state written right after a send)."""
    async with asyncio.timeout(timeout):
        while not check(value := await read()):
            await asyncio.sleep(0.05)
    return value


def dm_with(
    fake: FakeDiscord, user: FakeDiscordUser, *, button: str = "", text: str = ""
) -> list[FakeMessage]:
    """The user's DMs from the bot that carry a button whose custom_id starts with `button` / contain `text`."""
    return [
        m
        for m in fake.dm_messages(user.id)
        if (not button or any(c.startswith(button) for c in m.custom_ids)) and text in m.content
    ]


async def consent(fake: FakeDiscord, user: FakeDiscordUser) -> None:
    await user.slash("start")
    policy = (await fake.wait_for(lambda: dm_with(fake, user, button="consent:yes")))[-1]
    await user.press(policy, "consent:yes")
    await fake.wait_for(lambda: dm_with(fake, user, text="Thank you!"))


async def upload_and_train(fake: FakeDiscord, user: FakeDiscordUser, photos: list) -> str:
    """Send the photos in one DM, press Train; returns the queued job's id from the Stop button."""
    await user.send_dm(attachments=photos)
    summary = (await fake.wait_for(lambda: dm_with(fake, user, button="train")))[-1]
    assert summary.content.count("looks good") == len(photos)
    await user.press(summary, "train")
    progress = (await fake.wait_for(lambda: dm_with(fake, user, button="cancel:")))[-1]
    return progress.custom_ids[0].removeprefix("cancel:")


async def test_whole_flow_in_dms_then_forget(fake: FakeDiscord, photos: list, tmp_path: Path) -> None:
    async with running(make_settings(tmp_path, fake), with_worker=True) as app:
        alex = fake.user(1001)
        start = await alex.slash("start")
        policy = (await fake.wait_for(lambda: dm_with(fake, alex, button="consent:yes")))[-1]
        await fake.wait_for(lambda: len(start.responses) == 2)
        assert [(r.kind, r.type, r.ephemeral) for r in start.responses] == [
            ("callback", 5, True),
            ("delete", None, True),
        ]  # acknowledged privately at once; the thinking note goes once the answer is in the DM
        assert "Do you agree?" in policy.content and len(policy.content) <= 2000

        press = await alex.press(policy, "consent:yes")
        await fake.wait_for(lambda: dm_with(fake, alex, text="Thank you!"))
        assert press.responses[0].type == 6  # deferred within 3 s, then the answer in the DM

        await upload_and_train(fake, alex, photos)
        assert len(fake.downloads) == 3
        ready = (await fake.wait_for(lambda: dm_with(fake, alex, text="model is ready"), timeout=120))[-1]
        style = next(c for c in ready.custom_ids if c.startswith("style:"))
        await alex.press(ready, style)

        results = (await fake.wait_for(lambda: dm_with(fake, alex, text="AI-generated"), timeout=120))[-1]
        assert [a.filename.endswith(".png") for a in results.attachments] == [True, True]
        assert all(a.data.startswith(b"\x89PNG") for a in results.attachments)
        # the "another style" button follows as its own part, so a restart never resends the images
        again = (await fake.wait_for(lambda: dm_with(fake, alex, button="styles"), timeout=60))[-1]
        assert again.custom_ids == ["styles"] and int(again.id) > int(results.id)

        user_id = app.engine.pseudonym("discord", str(alex.id))
        # training progress, "model ready", style progress, results, the button: recorded once sent
        sent = await eventually(lambda: app.engine.messages(user_id), lambda ids: len(ids) == 5)
        assert str(results.id) in sent

        forget = await alex.slash("forget")
        confirm = (await fake.wait_for(lambda: dm_with(fake, alex, button="forget:yes")))[-1]
        await alex.press(confirm, "forget:yes")
        receipt = (await fake.wait_for(lambda: dm_with(fake, alex, text="Everything is deleted")))[-1]
        assert "chat messages: 5" in receipt.content
        assert all(fake.message(int(message_id)).deleted for message_id in sent)
        assert forget.responses[0].ephemeral
        assert await app.engine.is_known(user_id) is False


async def test_guild_command_hands_off_to_dm(fake: FakeDiscord, tmp_path: Path) -> None:
    async with running(make_settings(tmp_path, fake)):
        alex = fake.user(1001)
        start = await alex.slash("start", in_guild=True)
        await fake.wait_for(lambda: len(start.responses) == 2)
        callback, handoff = start.responses
        assert (callback.type, callback.ephemeral) == (5, True)
        assert (handoff.kind, handoff.ephemeral) == ("edit", True)
        assert "direct message" in handoff.content
        assert all(m.ephemeral for m in fake.guild_messages())  # nothing public in the server
        policy = dm_with(fake, alex, button="consent:yes")
        assert len(policy) == 1 and "Do you agree?" in policy[0].content

        privacy = await alex.slash("privacy", in_guild=True)
        await fake.wait_for(lambda: len(privacy.responses) == 2)  # handed off once the DM is sent
        # The policy is longer than one Discord message: it arrives in pieces split at line breaks.
        contents = [m.content for m in fake.dm_messages(alex.id)]
        first = max(i for i, text in enumerate(contents) if text.startswith("Privacy policy"))
        policy_text = "\n".join(contents[first:])
        assert "marked as AI-generated" in policy_text and all(len(t) <= 2000 for t in contents[first:])


def test_long_texts_are_split_at_line_breaks() -> None:
    lines = [f"line {n:04d} " + "x" * 90 for n in range(60)]  # 6000 characters
    pieces = split_text("\n".join(lines))
    assert [len(p) <= 2000 for p in pieces] == [True, True, True, True]
    assert "\n".join(pieces).splitlines() == lines
    assert split_text("y" * 4100) == ["y" * 2000, "y" * 2000, "y" * 100]


async def test_closed_dms_get_an_ephemeral_hint(fake: FakeDiscord, tmp_path: Path) -> None:
    async with running(make_settings(tmp_path, fake)):
        alex = fake.user(1001)
        alex.close_dms()
        status = await alex.slash("status", in_guild=True)
        await fake.wait_for(lambda: len(status.responses) == 2)
        hint = status.responses[1]
        assert hint.ephemeral and "Allow direct messages from server members" in hint.content
        assert fake.dm_messages(alex.id) == []


async def test_server_images_are_never_received_by_default(
    fake: FakeDiscord, photos: list, tmp_path: Path
) -> None:
    async with running(make_settings(tmp_path, fake)):
        alex = fake.user(1001)
        await alex.post_in_guild(attachments=photos[:1])
        await alex.send_dm("hello")
        await fake.wait_for(lambda: dm_with(fake, alex, text="Send photos"))
        assert fake.dropped_events == ["MESSAGE_CREATE"]  # the bot does not subscribe to server messages
        assert fake.downloads == []


async def test_server_images_are_refused_even_when_received(
    fake: FakeDiscord, photos: list, tmp_path: Path
) -> None:
    intents = discord.Intents.default()
    intents.message_content = True  # an operator who turned everything on
    async with running(make_settings(tmp_path, fake), intents=intents):
        alex = fake.user(1001)
        await consent(fake, alex)
        await alex.post_in_guild(attachments=photos[:2])
        refusal = (await fake.wait_for(fake.guild_messages))[-1]
        assert "private chat" in refusal.content
        assert fake.downloads == []


async def test_forged_press_on_another_users_job_is_refused(
    fake: FakeDiscord, photos: list, tmp_path: Path
) -> None:
    async with running(make_settings(tmp_path, fake)) as app:  # no worker: the job stays queued
        alex, mallory = fake.user(1001), fake.user(1002, "mallory")
        await consent(fake, alex)
        job_id = await upload_and_train(fake, alex, photos)
        progress = dm_with(fake, alex, button="cancel:")[-1]
        owner = app.engine.pseudonym("discord", str(alex.id))

        forged = await mallory.forge_press(f"cancel:{job_id}", message_id=progress.id)
        await fake.wait_for(lambda: len(forged.responses) == 2)
        assert forged.responses[1].ephemeral and forged.responses[1].content == "That button is not for you."
        assert (await app.engine.job(owner, job_id)).state == "queued"

        await alex.slash("mydata")
        export = (await fake.wait_for(lambda: dm_with(fake, alex, text="Everything stored about you")))[-1]
        assert [a.filename for a in export.attachments] == ["likeness-data.json", "likeness-files.zip"]

        stop = await alex.press(progress, f"cancel:{job_id}")
        await fake.wait_for(lambda: dm_with(fake, alex, text="Stopped 1"))
        assert stop.responses[0].type == 6
        assert (await app.engine.job(owner, job_id)).state == "cancelled"


async def test_a_press_in_another_users_dm_only_gets_a_short_answer(
    fake: FakeDiscord, photos: list, tmp_path: Path
) -> None:
    """Mallory could train (consent and photos): her press on Alex's Train button must change nothing."""
    async with running(make_settings(tmp_path, fake)) as app:  # no worker: a job would stay queued
        alex, mallory = fake.user(1001), fake.user(1002, "mallory")
        for user in (alex, mallory):
            await consent(fake, user)
            await user.send_dm(attachments=photos)
            await fake.wait_for(lambda user=user: dm_with(fake, user, button="train"))
        summary = dm_with(fake, alex, button="train")[-1]

        def visible(user: FakeDiscordUser) -> list[tuple[int, str]]:
            """What the user's DM shows everyone in it: not the presser's ephemeral answers."""
            return [(m.id, m.content) for m in fake.dm_messages(user.id) if not m.ephemeral]

        before = {user.id: visible(user) for user in (alex, mallory)}
        press = await mallory.press(summary, "train")
        await fake.wait_for(lambda: len(press.responses) == 2)
        assert press.responses[0].type == 6  # deferred at once
        answer = press.responses[1]
        assert (answer.kind, answer.ephemeral) == ("followup", True)
        assert answer.content == "That button is not for you."
        await asyncio.sleep(0.5)  # anything the bot would still write lands by now
        for user in (alex, mallory):
            assert visible(user) == before[user.id]
            status = await app.engine.status(
                app.engine.pseudonym("discord", str(user.id)), "discord", app.conversation.t.policy_versions
            )
            assert status.jobs == [] and status.photos == len(photos)
        assert len(press.responses) == 2

        # A slash command sent from Alex's DM by Mallory (a forged interaction) answers in Mallory's own DM.
        status = {"id": fake.commands["status"]["id"], "name": "status", "type": 1, "options": []}
        command = await fake._start_interaction(mallory, 2, alex.dm_channel_id, status, None)
        await fake.wait_for(lambda: dm_with(fake, mallory, text="What is stored about you"))
        await fake.wait_for(lambda: len(command.responses) == 2)
        assert "direct message" in command.responses[1].content  # "continue in your DM", privately
        assert visible(alex) == before[alex.id]

        own = await alex.press(summary, "train")  # the same button, pressed by its owner, still works
        await fake.wait_for(lambda: dm_with(fake, alex, text="Training queued"))
        assert own.responses[0].type == 6


async def test_commands_synced_once_and_buttons_survive_a_restart(fake: FakeDiscord, tmp_path: Path) -> None:
    settings = make_settings(tmp_path, fake)
    async with running(settings):
        alex = fake.user(1001)
        start = await alex.slash("start")
        policy = (await fake.wait_for(lambda: dm_with(fake, alex, button="consent:yes")))[-1]
        await fake.wait_for(lambda: len(start.responses) == 2)  # answered before the bot stops
    assert sorted(fake.commands) == sorted(COMMANDS)
    assert fake.commands["forget"]["contexts"] == [0, 1, 2]  # servers, DMs with the bot, private channels
    async with running(settings):
        assert fake.identifies == 2
        await alex.press(policy, "consent:yes")  # a button sent before the restart
        await fake.wait_for(lambda: dm_with(fake, alex, text="Thank you!"))
    assert fake.command_syncs == 1
    assert (tmp_path / "discord-commands.sha").exists()


async def test_telegram_and_discord_in_one_process(fake: FakeDiscord, tmp_path: Path) -> None:
    async with FakeTelegram() as telegram, running(make_settings(tmp_path, fake, telegram)) as app:
        assert sorted(app.conversation.messengers) == ["discord", "telegram"]
        sam, alex = telegram.user(2002, "Sam"), fake.user(1001)
        await sam.send_text("/start")
        await alex.slash("start")
        await telegram.wait_for_message(2002, "Do you agree?")
        await fake.wait_for(lambda: dm_with(fake, alex, text="Do you agree?"))
        await consent(fake, alex)
        users = await app.engine.store.fetchall("SELECT platform FROM users")
        assert [row["platform"] for row in users] == ["discord"]  # one engine; Sam has not agreed yet
