"""The user's language on Discord: a real discord.py client against tests/fake_discord.py, the real engine
on the tiny model. Greta's client is German: slash commands, button presses and the DMs (which carry no
locale) all speak German; command names stay English with German descriptions."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.flow import COMMANDS
from tests import faces_data as fd
from tests.fake_discord import FakeDiscord, serving
from tests.test_discord_flow import JPEG, dm_with, eventually, make_settings, running

pytestmark = pytest.mark.timeout(900)
SLOW = 300.0  # seconds for model work on a shared 2-core CPU


@pytest.fixture
async def fake() -> AsyncIterator[FakeDiscord]:
    async with serving() as server:
        yield server


@pytest.fixture(scope="module")
def photos() -> list[tuple[str, bytes, str]]:
    return [(f"ich-{n}.jpg", data, JPEG) for n, data in enumerate(fd.same_person_photos())]


async def test_a_german_discord_user_gets_german_throughout(
    fake: FakeDiscord, photos: list, tmp_path: Path
) -> None:
    async with running(make_settings(tmp_path, fake), with_worker=True) as app:
        de = app.conversation.t["de"]
        greta = fake.user(3001, "greta")
        greta.locale = "de"
        start = await greta.slash("start", in_guild=True)
        await fake.wait_for(lambda: len(start.responses) == 2)
        assert "Ich habe dir eine Direktnachricht geschickt" in start.responses[1].content  # the hand-off
        policy = (await fake.wait_for(lambda: dm_with(fake, greta, button="consent:yes")))[-1]
        assert "Bist du einverstanden?" in policy.content and de.schedule("discord") in policy.content
        assert policy.labels == ["✅ Einverstanden", "Nein, danke"]
        await greta.press(policy, "consent:yes")
        await fake.wait_for(lambda: dm_with(fake, greta, text="Danke!"))
        user_id = app.engine.pseudonym("discord", str(greta.id))
        assert (await app.engine.consent(user_id))["language"] == "de"

        await greta.send_dm(attachments=photos)  # a DM message has no locale: the stored language
        summary = (await fake.wait_for(lambda: dm_with(fake, greta, button="train")))[-1]
        assert (
            summary.content.count("sieht gut aus") == 3
            and "Bisher 3 von mindestens 3 Fotos." in summary.content
        )
        await greta.press(summary, "train")
        progress = (await fake.wait_for(lambda: dm_with(fake, greta, text="Training ist eingereiht")))[-1]
        ready = (await fake.wait_for(lambda: dm_with(fake, greta, text="Modell ist fertig"), timeout=SLOW))[
            -1
        ]
        assert "Bewerbungsfoto" in ready.labels
        await greta.press(ready, "style:headshot")
        results = (
            await fake.wait_for(lambda: dm_with(fake, greta, text="KI-generiert von Likeness"), timeout=SLOW)
        )[-1]
        caption = results.content.splitlines()
        assert caption[0] == "Bewerbungsfoto · KI-generiert von Likeness"
        assert (
            caption[1] == "1: kein Gesicht gefunden · 2: kein Gesicht gefunden"
        )  # main's likeness lines, in German
        done = await eventually(lambda: _content(fake, progress.id), lambda text: text.startswith("Fertig"))
        assert done.endswith("100 %")

        await greta.slash("status")
        status = (await fake.wait_for(lambda: dm_with(fake, greta, text="Was über dich gespeichert ist")))[-1]
        assert "• Einwilligung: erteilt am " in status.content and de.schedule("discord") in status.content

        await greta.slash("forget")
        confirm = (await fake.wait_for(lambda: dm_with(fake, greta, button="forget:yes")))[-1]
        assert confirm.labels == ["Ja, alles löschen", "Meine Daten behalten"]
        await greta.press(confirm, "forget:yes")
        receipt = (await fake.wait_for(lambda: dm_with(fake, greta, text="Alles ist gelöscht")))[-1]
        assert "• Chat-Nachrichten: " in receipt.content and "• Einwilligungsnachweise: 1" in receipt.content


async def _content(server: FakeDiscord, message_id: int) -> str:
    return server.message(message_id).content


async def test_an_unsupported_locale_is_english_and_language_switches(
    fake: FakeDiscord, tmp_path: Path
) -> None:
    async with running(make_settings(tmp_path, fake)):
        kenji = fake.user(3002, "kenji")
        kenji.locale = "ja"
        await kenji.slash("start")
        await fake.wait_for(lambda: dm_with(fake, kenji, text="Do you agree?"))
        await kenji.slash("language")
        menu = (await fake.wait_for(lambda: dm_with(fake, kenji, button="lang:")))[-1]
        assert menu.labels[0] == "English" and "Deutsch" in menu.labels
        await kenji.press(menu, "lang:de")
        await fake.wait_for(lambda: dm_with(fake, kenji, text="Ab jetzt spreche ich Deutsch."))
        await kenji.slash("help")
        await fake.wait_for(lambda: dm_with(fake, kenji, text="Befehle:"))


async def test_command_names_stay_english_with_localised_descriptions(
    fake: FakeDiscord, tmp_path: Path
) -> None:
    async with running(make_settings(tmp_path, fake)):
        pass
    assert sorted(fake.commands) == sorted(COMMANDS)
    start = fake.commands["start"]
    assert start["description"] == "What this bot does and how your data is handled"
    localised = start["description_localizations"]
    assert localised["de"] == "Was dieser Bot tut und wie mit deinen Daten umgegangen wird"
    assert localised["es-ES"] == localised["es-419"] == "Qué hace este bot y cómo se tratan tus datos"
    assert localised["pt-BR"].startswith("O que este bot faz")
    assert {"fr", "ru", "uk", "id"} <= set(localised) and "en-US" not in localised
    assert not start.get("name_localizations")
    (code,) = start["options"]  # `/start code:<invite code>`: its description is localised too
    assert code["name"] == "code" and code["description"] == "An invite code, if you were given one"
    assert code["description_localizations"]["de"] == "Ein Einladungscode, falls du einen bekommen hast"
    assert code["description_localizations"]["es-ES"] == "Un código de invitación, si te dieron uno"
    assert not code.get("name_localizations")
