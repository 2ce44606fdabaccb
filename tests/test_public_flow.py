"""Running in public, end to end: the real App against tests/fake_telegram.py and tests/fake_discord.py over
real HTTP, and the console front-end. Time is a `FakeClock` injected into the engine (quota renewal, invite
expiry, flood refill); metrics are scraped over real HTTP and parsed with prometheus-client's parser.

The worker's part is played by the test through the engine's own `record_adapter` / `record_portraits`
(what the worker calls), so quotas can be used up without minutes of model work on a 2-core CPU; the
model itself is tested end to end in test_telegram_flow.py and test_discord_flow.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import PIL.Image
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bot.app import App
from bot.console import ConsoleFrontend
from engine import video_encode
from engine.clock import FakeClock
from tests import faces_data as fd
from tests.fake_discord import FakeDiscord, serving
from tests.fake_telegram import FakeTelegram, FakeUser, SentMessage
from tests.tiny_settings import tiny_settings

pytestmark = pytest.mark.timeout(300)

DAY = 86400.0
OPERATOR, ANNA, BEN, CLEO = 7310000500, 7310000501, 7310000502, 7310000503  # realistic ids


@contextlib.asynccontextmanager
async def telegram_app(
    tmp_path: Path, clock: FakeClock, **env: str
) -> AsyncIterator[tuple[FakeTelegram, App]]:
    fake = FakeTelegram()
    await fake.start()
    settings = tiny_settings(
        tmp_path / "data",
        LIKENESS_TELEGRAM_TOKEN=fake.token,
        LIKENESS_TELEGRAM_API_URL=fake.base_url,
        LIKENESS_ACCESS_OPERATORS=f"telegram:{OPERATOR}",
        **env,
    )
    app = await App.create(settings, clock=clock, with_worker=False)
    try:
        await app.start()
        yield fake, app
    finally:
        await app.stop()
        await fake.stop()


async def said(fake: FakeTelegram, user: FakeUser, text: str, expect: str) -> SentMessage:
    """Send `text` and wait for the bot's next message containing `expect`."""
    last = max((m.message_id for m in fake.messages(user.id)), default=0)
    await user.send_text(text)
    return await fake.wait_for_message(user.id, expect, after=last)


async def with_a_model(fake: FakeTelegram, app: App, user: FakeUser) -> SentMessage:
    """Consent, an album, Train, and a (made-up) model recorded as the worker would: the "model is ready"
    message with its style buttons."""
    consent = await said(fake, user, "/start", "Do you agree?")
    await user.press(consent, "consent:yes")
    await fake.wait_for_message(user.id, "Thank you!")
    await user.send_album(fd.same_person_photos())
    await user.press(await fake.wait_for_message(user.id, "photos so far"), "train")
    await fake.wait_for_message(user.id, "Training queued")
    job = await app.engine.queue.claim("test-worker")
    assert await app.engine.record_adapter(job, b"lora", [0.5], "sks", [])
    return await fake.wait_for_message(user.id, "model is ready")


def bot_texts(fake: FakeTelegram, user: FakeUser, contains: str) -> list[str]:
    return [m.text for m in fake.messages(user.id) if m.from_bot and m.text and contains in m.text]


async def scrape(port: int) -> tuple[dict, str, int]:
    """GET /metrics and /healthz: (samples by (name, labels), raw text, health status)."""
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{port}/metrics") as response:
            assert response.status == 200
            text = await response.text()
        async with http.get(f"http://127.0.0.1:{port}/healthz") as response:
            health = response.status
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    return samples, text, health


# -- Telegram: invite codes, the operator console, metrics ----------------------------------------------
async def test_invites_operator_console_and_metrics_on_telegram(tmp_path: Path) -> None:
    clock = FakeClock()
    async with telegram_app(
        tmp_path, clock, LIKENESS_ACCESS_MODE="invite", LIKENESS_METRICS_ADDRESS="127.0.0.1:0"
    ) as (fake, app):
        operator, anna, ben, cleo = (fake.user(n) for n in (OPERATOR, ANNA, BEN, CLEO))

        # A stranger: one clear message, and nothing of theirs is downloaded or stored.
        await said(fake, cleo, "/start", "invite-only")
        await cleo.send_photo(fd.same_person_photos()[0])
        await fake.wait_for(lambda f: len(bot_texts(f, cleo, "invite-only")) == 2)
        assert fake.downloads == [] and fake.calls_to("getFile") == []
        assert not await app.engine.is_known(app.engine.pseudonym("telegram", str(CLEO)))

        # /ops is the unknown command for anyone but an operator.
        unknown = await said(fake, cleo, "/ops", "know that command")
        assert unknown.text == app.conversation.t("unknown_command")

        # The operator needs no consent and no invite; the code comes with its deep link.
        invite = await said(fake, operator, "/ops invite 2 1d", "Invite code")
        code = re.search(r"Invite code (\S+):", invite.text).group(1)
        assert f"https://t.me/{fake.bot_user['username']}?start={code}" in invite.text
        assert "2 use(s)" in invite.text

        await said(fake, anna, f"/start {code}", "Do you agree?")  # the deep link arrives as /start <code>
        await said(fake, ben, f"/start {code}", "Do you agree?")
        await said(fake, cleo, f"/start {code}", "not valid")  # used up
        await said(fake, anna, "/start", "Do you agree?")  # admitted for good, no code needed again

        later = await said(fake, operator, "/ops invite", "Invite code")
        later_code = re.search(r"Invite code (\S+):", later.text).group(1)
        clock.advance(7 * DAY + 1)
        await said(fake, cleo, f"/start {later_code}", "not valid")  # expired
        await said(fake, cleo, "/train", "invite-only")

        overview = await said(fake, operator, "/ops", "Likeness now")
        assert "Overdue deadlines: 0" in overview.text and "Intake: open" in overview.text
        log = await said(fake, operator, "/ops log", "invite")
        assert log.text.count("· invite ·") == 2
        assert app.engine.support_reference(app.engine.pseudonym("telegram", str(OPERATOR))) in log.text
        for message in (overview, log, invite):
            assert all(str(n) not in message.text for n in (ANNA, BEN, CLEO))

        samples, text, health = await scrape(app.background.metrics.port)
        assert health == 200
        assert samples[("likeness_updates_total", (("kind", "command"), ("platform", "telegram")))] == 12
        assert samples[("likeness_updates_total", (("kind", "photo"), ("platform", "telegram")))] == 1
        assert samples[("likeness_refusals_total", (("reason", "access"),))] >= 3
        assert samples[("likeness_refusals_total", (("reason", "invite_invalid"),))] == 2
        assert samples[("likeness_deadlines_overdue", ())] == 0
        for personal in (str(ANNA), str(BEN), str(CLEO), str(OPERATOR), code, "Alex"):
            assert personal not in text


# -- Telegram: flood control ----------------------------------------------------------------------------
async def test_a_flood_from_one_user_is_answered_once_while_another_is_served(tmp_path: Path) -> None:
    clock = FakeClock()
    flood = {"LIKENESS_ACCESS_FLOOD_PER_MINUTE": "20", "LIKENESS_ACCESS_FLOOD_BURST": "10"}  # the defaults
    async with telegram_app(tmp_path, clock, **flood) as (fake, app):
        flooder, other = fake.user(ANNA), fake.user(BEN)
        for _ in range(12):
            await flooder.send_text("/help")
        await fake.wait_for_message(ANNA, "going too fast")
        await flooder.send_photo(fd.same_person_photos()[0])  # beyond the limit: not even downloaded
        await flooder.send_text("/help")
        await said(fake, other, "/help", "Commands:")  # the other user is served at once
        registry = app.engine.metrics.registry
        await fake.wait_for(  # the warning, then three ignored: a /help, the photo, the last /help
            lambda f: registry.get_sample_value("likeness_refusals_total", {"reason": "flood"}) == 4
        )
        await asyncio.sleep(0.3)
        assert len(bot_texts(fake, flooder, "Commands:")) == 10  # the burst
        assert len(bot_texts(fake, flooder, "going too fast")) == 1  # answered once, then ignored
        assert fake.calls_to("getFile") == []

        clock.advance(29)  # not yet full again: still ignored
        await flooder.send_text("/help")
        await said(fake, other, "/privacy", "Privacy policy")
        await asyncio.sleep(0.3)
        assert len(bot_texts(fake, flooder, "Commands:")) == 10
        clock.advance(1)  # 30 s at 20 a minute refill the burst of 10
        await said(fake, flooder, "/help", "Commands:")


# -- Telegram: quotas with renewal, one pending request, pause and block ----------------------------------
async def test_quotas_pause_and_block_on_telegram(tmp_path: Path) -> None:
    clock = FakeClock()
    async with telegram_app(tmp_path, clock, LIKENESS_QUOTA_REQUESTS="1") as (fake, app):
        engine, anna, operator = app.engine, fake.user(ANNA), fake.user(OPERATOR)
        ready = await with_a_model(fake, app, anna)
        style = next(b["callback_data"] for b in ready.buttons if b["callback_data"].startswith("style:"))

        await anna.press(ready, style)
        await fake.wait_for_message(ANNA, "portraits coming up")
        await anna.press(ready, style)  # a second press while the first is queued
        await fake.wait_for_message(ANNA, "still being made")
        status = await said(fake, anna, "/status", "Support reference")
        assert "Style requests: 0 of 1 left" in status.text
        ref = re.search(r"Support reference: (\S+)", status.text).group(1)

        job = await engine.queue.claim("test-worker")
        adapter = await engine.adapter(job.user_id)
        assert await engine.record_portraits(job, job.payload["preset"], [b"\x89PNG fake"], adapter["id"])
        await fake.wait_for_message(ANNA, "AI-generated")
        last = fake.messages(ANNA)[-1].message_id
        await anna.press(ready, style)
        refusal = await fake.wait_for_message(ANNA, "You have used your 1 style requests", after=last)
        assert "available from" in refusal.text
        count = await engine.store.fetchone("SELECT COUNT(*) AS n FROM jobs WHERE kind='generate'")
        assert count["n"] == 1  # neither the second press nor the one over quota queued anything

        clock.advance(DAY + 1)  # the rolling window moves on
        last = fake.messages(ANNA)[-1].message_id
        await anna.press(ready, style)
        await fake.wait_for_message(ANNA, "portraits coming up", after=last)
        await said(fake, anna, "/cancel", "Stopped")
        status = await said(fake, anna, "/status", "Support reference")
        assert "Style requests: 1 of 1 left" in status.text  # the cancelled request gave its unit back

        await said(fake, operator, "/ops pause", "paused")
        last = fake.messages(ANNA)[-1].message_id
        await anna.press(ready, style)
        await fake.wait_for_message(ANNA, "back soon", after=last)
        await said(fake, operator, "/ops resume", "accepted again")

        blocked = await said(fake, operator, f"/ops block {ref}", "is blocked")
        assert ref in blocked.text
        await said(fake, anna, "/train", "not accepted")
        downloads = len(fake.downloads)
        await anna.send_photo(fd.same_person_photos()[0])
        await fake.wait_for(lambda f: len(bot_texts(f, anna, "not accepted")) == 2)
        assert len(fake.downloads) == downloads  # a blocked user's photos are not downloaded
        await said(fake, operator, f"/ops unblock {ref}", "unblocked")
        log = await said(fake, operator, "/ops log", "unblock")
        assert [line.split(" · ")[1] for line in log.text.splitlines()] == [
            "unblock",
            "block",
            "resume",
            "pause",
        ]


async def test_a_press_handled_up_to_its_answer_before_a_restart_is_answered_not_refused(
    tmp_path: Path,
) -> None:
    """The bot queued the request and stopped before answering; Telegram delivers the same press again
    after the restart: the user gets the answer they never got, for the job that exists, not "still being
    made" for a request they do not know they made. A real second press is still refused."""
    async with telegram_app(tmp_path, FakeClock()) as (fake, app):
        engine, anna = app.engine, fake.user(ANNA)
        ready = await with_a_model(fake, app, anna)
        style = next(b["callback_data"] for b in ready.buttons if b["callback_data"].startswith("style:"))

        user_id = engine.pseudonym("telegram", ANNA)
        queued = await engine.request_portraits(
            user_id, style.removeprefix("style:")
        )  # ...then the bot stopped
        await anna.press(ready, style)  # the same press, delivered again after the restart
        answer = await fake.wait_for_message(ANNA, "portraits coming up", after=ready.message_id)
        assert answer.find_button("Stop")["callback_data"] == f"cancel:{queued}"
        assert [j.id for j in await engine.queue.active_jobs(user_id)] == [queued]  # no second job

        await anna.press(ready, style)  # a second press, now that the first one was answered
        await fake.wait_for_message(ANNA, "still being made", after=answer.message_id)
        assert [j.id for j in await engine.queue.active_jobs(user_id)] == [queued]


async def test_a_clip_over_the_video_quota_is_refused_and_stills_are_not_held_back(tmp_path: Path) -> None:
    clock = FakeClock()
    async with telegram_app(tmp_path, clock, LIKENESS_QUOTA_VIDEOS="1") as (fake, app):
        engine, ben = app.engine, fake.user(BEN)
        ready = await with_a_model(fake, app, ben)
        clip = next(key for key, preset in engine.presets.items() if preset.video)
        still = next(key for key, preset in engine.presets.items() if not preset.video)

        await ben.press(ready, f"style:{clip}")
        await fake.wait_for_message(BEN, "one animated clip coming up")
        job = await engine.queue.claim("test-worker")
        frames = [PIL.Image.new("RGB", (64, 64), (40 * n, 90, 160)) for n in range(4)]
        adapter = await engine.adapter(job.user_id)
        assert await engine.record_clip(job, clip, video_encode.encode_mp4(frames, 8), adapter["id"])
        await fake.wait_for(lambda f: any(m.animation for m in f.messages(BEN)))

        last = fake.messages(BEN)[-1].message_id
        await ben.press(ready, f"style:{clip}")
        refusal = await fake.wait_for_message(
            BEN, "You have used your 1 animated clips for 1 day", after=last
        )
        assert "The next one is available from" in refusal.text and "UTC" in refusal.text
        count = await engine.store.fetchone("SELECT COUNT(*) AS n FROM jobs WHERE kind='video'")
        assert count["n"] == 1  # the press over quota queued nothing
        status = await said(fake, ben, "/status", "Support reference")
        assert "Animated clips: 0 of 1 left" in status.text and "Style requests: 10 of 10 left" in status.text

        last = fake.messages(BEN)[-1].message_id
        await ben.press(ready, f"style:{still}")  # still portraits are not held back by the video quota
        await fake.wait_for_message(BEN, "portraits coming up", after=last)


# -- Discord: the invite as a slash-command option, /ops typed in the DM ----------------------------------
@pytest.fixture
async def discord_fake() -> AsyncIterator[FakeDiscord]:
    async with serving() as server:
        yield server


async def test_invite_and_operator_console_on_discord(discord_fake: FakeDiscord, tmp_path: Path) -> None:
    fake = discord_fake
    settings = tiny_settings(
        tmp_path / "data",
        LIKENESS_DISCORD_TOKEN=fake.token,
        LIKENESS_DISCORD_API_URL=fake.api_url,
        LIKENESS_ACCESS_MODE="invite",
        LIKENESS_ACCESS_OPERATORS=f"discord:{OPERATOR}",
        LIKENESS_METRICS_ADDRESS="127.0.0.1:0",
    )
    app = await App.create(settings, with_worker=False)
    await app.start()
    try:
        operator, anna = fake.user(OPERATOR), fake.user(ANNA)

        def dms(user, contains: str) -> list:
            return [m for m in fake.dm_messages(user.id) if contains in m.content]

        await anna.slash("start")
        await fake.wait_for(lambda: dms(anna, "invite-only"))
        await anna.send_dm("/ops")
        unknown = await fake.wait_for(lambda: dms(anna, "know that command"))
        assert unknown[0].content == app.conversation.t("unknown_command")

        await operator.send_dm("/ops invite")
        invite = (await fake.wait_for(lambda: dms(operator, "Invite code")))[0]
        code = re.search(r"Invite code (\S+):", invite.content).group(1)
        assert f"/start code:{code}" in invite.content
        await anna.slash("start", {"code": code})
        await fake.wait_for(
            lambda: [
                m
                for m in dms(anna, "Do you agree?")
                if any(c.startswith("consent:yes-") for c in m.custom_ids)
            ]
        )

        await operator.send_dm("/ops pause")
        await fake.wait_for(lambda: dms(operator, "paused"))
        await operator.send_dm("/ops")
        overview = (await fake.wait_for(lambda: dms(operator, "Likeness now")))[0]
        assert "Intake: paused" in overview.content

        samples, text, health = await scrape(app.background.metrics.port)
        assert health == 200  # the store answers and the Discord gateway is connected
        assert samples[("likeness_updates_total", (("kind", "command"), ("platform", "discord")))] >= 5
        assert str(ANNA) not in text and str(OPERATOR) not in text
    finally:
        await app.stop()


# -- the console: allowlist and an operator at the terminal ---------------------------------------------
async def test_allowlist_and_operator_on_the_console(tmp_path: Path) -> None:
    printed: list[str] = []
    console = ConsoleFrontend(tmp_path / "out", write=printed.append)

    async def run(settings_env: dict[str, str], lines: list[str]) -> list[str]:
        printed.clear()
        app = await App.create(
            tiny_settings(tmp_path / "data", **settings_env), console=console, with_worker=False
        )
        try:
            for line in lines:
                await app.conversation.dispatch(console.parse(line))
        finally:
            await app.engine.close()
        return list(printed)

    refused = await run(
        {"LIKENESS_ACCESS_MODE": "allowlist", "LIKENESS_ACCESS_ALLOW": "telegram:1"}, ["/start", "/ops"]
    )
    assert "only people the operator has added" in refused[0]
    assert "know that command" in refused[1]

    allowed = await run(
        {"LIKENESS_ACCESS_MODE": "allowlist", "LIKENESS_ACCESS_OPERATORS": "console:console-user"},
        ["/ops", "/ops invite 3 2d", "/ops block ZZZZ-ZZZZ", "/start"],
    )
    assert "Likeness now" in allowed[0]
    assert "Console: /start" in allowed[1] and "3 use(s)" in allowed[1]
    assert "No user has the reference ZZZZ-ZZZZ" in allowed[2]
    assert "Do you agree?" in allowed[3]  # operators are admitted in every mode
