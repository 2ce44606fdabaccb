"""What a newcomer meets in the conversation (issue 18): numbered photo feedback, honest ETAs, /status with
their own choices, a readable /mydata without an empty zip, texts that fit the console, an operator without
a contact, and a console /forget that removes the files it wrote."""

from __future__ import annotations

import json
import logging

from bot.app import App
from bot.console import CHAT, ConsoleFrontend
from bot.events import ButtonPress, Command, IncomingPhoto, PhotoMessage, Reply
from tests import faces_data as fd
from tests.retention_fixtures import Harness, make_settings, same_person_photos


async def test_each_photo_answer_names_its_place_and_the_count(tmp_path):
    bot = await Harness.open(make_settings(tmp_path))
    try:
        alice = bot.user("1001")
        await bot.consent(alice)
        good = same_person_photos()

        async def unreachable() -> bytes:
            raise ConnectionError("the platform timed out")

        def photo(data: bytes) -> IncomingPhoto:
            async def download() -> bytes:
                return data

            return IncomingPhoto(size=len(data), download=download)

        album = (
            photo(good[0]),
            photo(fd.encode(fd.coffee())),  # no face
            photo(good[1]),
            IncomingPhoto(size=None, download=unreachable),
            photo(good[2]),
        )
        await bot.app.conversation.handle(PhotoMessage(alice.chat, album))
        lines = bot.recorder.last.text.splitlines()
        assert lines[0] == "✅ Photo 1/5: looks good (1 saved)."
        assert lines[1].startswith("❌ Photo 2/5: ")
        assert lines[2] == "✅ Photo 3/5: looks good (2 saved)."
        assert lines[3] == "❌ Photo 4/5: I could not download it. Please send it again."
        assert lines[4] == "✅ Photo 5/5: looks good (3 saved)."
        assert "3 of at least 3 photos so far." in lines
    finally:
        await bot.close()


async def test_etas_say_estimating_until_a_duration_is_measured(tmp_path):
    bot = await Harness.open(make_settings(tmp_path))
    try:
        alice = bot.user("1001")
        await bot.onboard(alice)
        queued = await bot.press(alice, "train")
        assert "estimating" in queued.text and "minutes" not in queued.text  # 5 tiny steps: seconds
        await bot.run_jobs()
        style = next(iter(bot.engine.presets))
        assert "estimating" in (await bot.press(alice, f"style:{style}")).text  # no generation measured yet
        await bot.run_jobs()
        again = await bot.press(alice, f"style:{style}")
        assert "about" in again.text and "estimating" not in again.text
    finally:
        await bot.close()


async def test_status_states_the_users_own_choices(tmp_path):
    bot = await Harness.open(make_settings(tmp_path, LIKENESS_RETENTION_MESSAGES="off"))
    try:
        alice = bot.user("1001")
        await bot.consent(alice)
        default = (await bot.command(alice, "status")).text
        assert "deleted 7 days after it was last used" in default
        assert "stay in the chat until you delete them" in default
        await bot.press(alice, "set:model_day")
        await bot.press(alice, "set:messages_day")
        status = (await bot.command(alice, "status")).text
        assert "deleted 1 day after it was last used (your choice in /settings)" in status
        assert "deleted from the chat after 1 day" in status
        assert "7 days" not in status and "stay in the chat" not in status
    finally:
        await bot.close()


async def test_mydata_without_files_sends_no_empty_zip_and_reads_dates(tmp_path):
    bot = await Harness.open(make_settings(tmp_path))
    try:
        alice = bot.user("1001")
        await bot.consent(alice)
        reply = await bot.command(alice, "mydata")
        assert [name for name, _ in reply.files] == ["likeness-data.json"]
        assert "there is no zip" in reply.text
        summary = json.loads(dict(reply.files)["likeness-data.json"])
        assert summary["consents"][0]["given_at_utc"].endswith(" UTC")
        await bot.send_photos(alice, same_person_photos()[:1])
        reply = await bot.command(alice, "mydata")
        assert [name for name, _ in reply.files] == ["likeness-data.json", "likeness-files.zip"]
    finally:
        await bot.close()


async def test_console_texts_fit_the_console(tmp_path):
    bot = await Harness.open(make_settings(tmp_path), platform="console")
    try:
        alice = bot.user("console-user")
        consent = (await bot.command(alice, "start")).text
        assert "GPU" not in consent
        consented = (await bot.press(alice, "consent:yes")).text
        assert "album" not in consented and "photo PATH" in consented
        help_text = (await bot.command(alice, "help")).text
        assert "photo PATH" in help_text and "quit" in help_text
        privacy = (await bot.command(alice, "privacy")).text
        assert "the operator of this bot has not set a contact address" in privacy
    finally:
        await bot.close()


async def test_a_public_bot_without_an_operator_contact_warns_at_start(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="bot.app")
    for contact, platform in [("", "telegram"), ("privacy@example.org", "telegram"), ("", "console")]:
        bot = await Harness.open(
            make_settings(tmp_path / f"{platform}{bool(contact)}", LIKENESS_OPERATOR_CONTACT=contact),
            platform=platform,
        )
        caplog.clear()
        try:
            await bot.app.start()
            warned = [r for r in caplog.records if "LIKENESS_OPERATOR_CONTACT is not set" in r.getMessage()]
            assert len(warned) == (1 if platform == "telegram" and not contact else 0)
        finally:
            await bot.close()


async def test_console_forget_removes_the_files_it_saved(tmp_path):
    settings = make_settings(tmp_path / "data")
    printed: list[str] = []
    console = ConsoleFrontend(tmp_path / "results", write=printed.append)
    app = await App.create(settings, console=console, with_worker=False)
    try:
        conversation = app.conversation
        await conversation.handle(Command(CHAT, "start"))
        await conversation.handle(ButtonPress(CHAT, "consent:yes"))
        await conversation.handle(Command(CHAT, "mydata"))
        await console.send(CHAT, Reply("portraits", images=(b"png-1", b"png-2")))
        saved = sorted(p.name for p in (tmp_path / "results").iterdir())
        assert len(saved) == 3 and "likeness-data.json" in saved  # no zip: nothing but the consent is stored
        keep = tmp_path / "results" / "mine.txt"
        keep.write_text("not written by the console")
        await conversation.handle(Command(CHAT, "forget"))
        await conversation.handle(ButtonPress(CHAT, "forget:yes"))
        assert [p.name for p in (tmp_path / "results").iterdir()] == ["mine.txt"]
        assert "files saved on this computer: 3" in printed[-1]
    finally:
        await app.stop()
