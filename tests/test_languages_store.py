"""The language is stored with the user's pseudonymous row and consent records the language agreed to:
through the engine facade on SQLite and PostgreSQL, and the upgrade of a SQLite file from before languages."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from bot.texts import Texts
from engine.db.sqlite.migrations import MIGRATIONS
from engine.facade import Engine
from tests.tiny_settings import tiny_settings

CHAT = {"chat_id": "1", "user_id": "1"}


async def test_consent_is_per_language_and_a_change_asks_only_that_language_again(
    tmp_path: Path, backend_env: dict[str, str]
) -> None:
    engine = await Engine.open(tiny_settings(tmp_path, **backend_env))
    try:
        ana, bea = engine.pseudonym("telegram", 1), engine.pseudonym("telegram", 2)
        await engine.give_consent(ana, "telegram", CHAT, "es-1", "Las fotos son mías.", language="es")
        await engine.give_consent(bea, "telegram", CHAT, "en-1", "The photos are of me.", language="en")
        current = {"en": "en-1", "es": "es-1"}
        assert await engine.has_consent(ana, current) and await engine.has_consent(bea, current)
        spanish_changed = {"en": "en-1", "es": "es-2"}
        assert not await engine.has_consent(ana, spanish_changed)  # Ana must read the new Spanish text
        assert await engine.has_consent(bea, spanish_changed)  # Bea agreed to English: unaffected
        assert not await engine.has_consent(ana, {"en": "es-1"})  # Spanish no longer offered
        record = await engine.consent(ana)
        assert (record["policy_version"], record["language"]) == ("es-1", "es")
    finally:
        await engine.close()


async def test_the_choice_lives_in_the_users_row_and_goes_with_forget(
    tmp_path: Path, backend_env: dict[str, str]
) -> None:
    engine = await Engine.open(tiny_settings(tmp_path, **backend_env))
    try:
        user = engine.pseudonym("discord", 7)
        assert (await engine.language_preference(user)).known is False
        await engine.report_language(user, "de")  # an unknown user: nothing is stored
        assert await engine.is_known(user) is False
        await engine.choose_language(user, "discord", "uk")
        await engine.report_language(user, "de")
        preference = await engine.language_preference(user)
        assert (preference.chosen, preference.reported, preference.known) == ("uk", "de", True)
        await engine.forget(user)
        assert await engine.is_known(user) is False
        assert (await engine.language_preference(user)).chosen is None
    finally:
        await engine.close()


async def test_consents_from_before_languages_stay_valid_english_ones(tmp_path: Path) -> None:
    """A SQLite file from before the languages migration: its consents were to the English text."""
    settings = tiny_settings(tmp_path)
    english = Texts(settings)["en"].policy_version
    path = settings.data_dir / "likeness.sqlite3"
    path.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(path) as old:
        old.executescript(MIGRATIONS[0])
        old.execute("PRAGMA user_version=1")
        old.execute(
            "INSERT INTO users(id, platform, created_at, last_active_at) VALUES ('u', 'telegram', 1, 1)"
        )
        old.execute(
            "INSERT INTO consents(id, user_id, policy_version, attested, given_at) VALUES ('c', 'u', ?, 'x', 1)",
            (english,),
        )
    engine = await Engine.open(settings)
    try:
        assert (await engine.consent("u"))["language"] == "en"
        assert await engine.has_consent("u", Texts(settings).policy_versions)
        assert (await engine.language_preference("u")).chosen is None
    finally:
        await engine.close()
