"""Every language is complete and consistent with English, and formats plurals, durations and dates itself."""

from __future__ import annotations

import re
import shutil
import string
import tomllib
from pathlib import Path
from typing import Any

import pytest
from babel import Locale

from bot.telegram_bot import TelegramMessenger
from bot.texts import DEFAULT_LANGUAGE, TEXTS_DIR, Texts, language_tag
from engine.settings import CONFIG_DIR, load_settings

CODES = sorted(path.stem for path in TEXTS_DIR.glob("*.toml"))
OTHERS = [code for code in CODES if code != DEFAULT_LANGUAGE]
PRESETS = tomllib.loads((CONFIG_DIR / "presets.toml").read_text(encoding="utf-8"))["presets"]
TELEGRAM_LIFETIME = TelegramMessenger.message_lifetime
OWN_TABLES = {"language", "styles"}  # per-language tables that English does not share key for key
ENGLISH_ONLY = {"ops"}  # the operator's /ops texts: English, like every operator-facing text


def read(code: str) -> dict[str, Any]:
    return tomllib.loads((TEXTS_DIR / f"{code}.toml").read_text(encoding="utf-8"))


ENGLISH = read(DEFAULT_LANGUAGE)


def entries(data: dict[str, Any]) -> dict[tuple[str, str], Any]:
    return {
        (table, key): value
        for table, values in data.items()
        if table not in OWN_TABLES | ENGLISH_ONLY
        for key, value in values.items()
    }


def placeholders(template: str) -> set[str]:
    return {field for _, field, _, _ in string.Formatter().parse(template) if field is not None}


def templates(value: Any) -> list[str]:
    """Every template string in an entry: a string, a plural table's forms, an intake [reason, tip]."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return list(value.values())
    return list(value)


def integer_categories(code: str) -> set[str]:
    """The plural categories whole numbers reach in this language, and 'other' (the fallback)."""
    rule = Locale.parse(code).plural_form
    return {rule(n) for n in range(1001)} | {"other"}


def test_the_languages_the_issue_asks_for_are_there():
    assert {"en", "es", "pt", "de", "fr", "ru", "uk", "id"} <= set(CODES)


@pytest.mark.parametrize("code", OTHERS)
def test_every_key_of_english_and_no_other(code: str):
    english, other = entries(ENGLISH), entries(read(code))
    assert sorted(set(english) - set(other)) == []
    assert sorted(set(other) - set(english)) == []


@pytest.mark.parametrize("code", OTHERS)
def test_same_placeholders_and_shapes_as_english(code: str):
    other = entries(read(code))
    for where, value in entries(ENGLISH).items():
        theirs = other[where]
        assert type(theirs) is type(value), where
        if isinstance(value, list):
            assert len(theirs) == len(value), where
            for mine, translated in zip(value, theirs, strict=True):
                assert placeholders(translated) == placeholders(mine), where
        else:
            wanted = set().union(*(placeholders(t) for t in templates(value)))
            for template in templates(theirs):
                assert placeholders(template) == wanted, (where, template)


@pytest.mark.parametrize("code", CODES)
def test_plural_tables_have_the_forms_the_language_needs(code: str):
    needed, known = integer_categories(code), {"zero", "one", "two", "few", "many", "other"}
    for where, value in entries(read(code)).items():
        if isinstance(value, dict):
            assert needed <= set(value), (where, needed - set(value))
            assert set(value) <= known, where
            assert all("{count}" in form for form in value.values()), where


@pytest.mark.parametrize("code", CODES)
def test_every_template_formats(code: str):
    """No stray braces, no positional fields: each template formats with its own placeholders."""
    for where, value in entries(read(code)).items():
        for template in templates(value):
            fields = placeholders(template)
            assert all(field.isidentifier() for field in fields), (where, fields)
            template.format(**dict.fromkeys(fields, "x"))


@pytest.mark.parametrize("code", OTHERS)
def test_names_styles_and_command_menus(code: str):
    data = read(code)
    assert data["language"]["name"].strip()
    assert set(data["styles"]) == set(PRESETS)  # every stock preset has a label in this language
    assert all(0 < len(label) <= 80 for label in data["styles"].values())
    assert all(0 < len(text) <= 100 for text in data["commands"].values())  # Discord's limit


def test_language_names_are_distinct_and_in_their_own_language():
    names = {code: read(code)["language"]["name"] for code in CODES}
    assert names["en"] == "English" and names["es"] == "Español" and names["ru"] == "Русский"
    assert len(set(names.values())) == len(names)


def retention_numbers(text: str) -> list[int]:
    return sorted(int(number) for number in re.findall(r"\d+", text))


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {
            "LIKENESS_RETENTION_PHOTOS": "15m",
            "LIKENESS_RETENTION_MODEL": "3d",
            "LIKENESS_RETENTION_JOBS": "2h",
        },
        {"LIKENESS_RETENTION_MESSAGES": "72h", "LIKENESS_RETENTION_OUTPUTS": "90s"},
        {"LIKENESS_RETENTION_MESSAGES": "1m", "LIKENESS_RETENTION_MODEL": "21d"},
    ],
)
def test_every_policy_states_the_same_durations(overrides: dict[str, str]):
    settings = load_settings(overrides)
    texts = Texts(settings)
    texts.cap_messages("telegram", TELEGRAM_LIFETIME)  # as the Telegram front-end does
    retention = settings.retention
    durations = [retention.photos, retention.model, retention.outputs, retention.jobs]
    for platform in (None, "telegram", "discord"):
        english = retention_numbers(texts["en"].schedule(platform))
        for code in CODES:
            language = texts[code]
            schedule = language.schedule(platform)
            assert retention_numbers(schedule) == english, (code, schedule)
            for seconds in durations:
                assert language.duration(seconds) in schedule, (code, seconds)
            assert schedule in language.policy_summary(platform)
            assert schedule in language.policy_full(platform)
    if retention.messages:
        for code in CODES:
            capped = texts[code].duration(min(retention.messages, TELEGRAM_LIFETIME))
            assert capped in texts[code].schedule("telegram")


def test_durations_plurals_and_dates_per_language():
    texts = Texts(load_settings({}))
    assert texts["en"].duration(90) == "90 seconds" and texts["en"].duration(86400) == "1 day"
    assert texts["de"].duration(7 * 86400) == "7 Tage"
    assert [texts["ru"].duration(n * 86400) for n in (1, 3, 5, 21)] == [
        "1 день",
        "3 дня",
        "5 дней",
        "21 день",
    ]
    assert texts["uk"].duration(2 * 3600) == "2 години"
    assert texts["fr"].duration(60) == "1 minute" and texts["es"].duration(120) == "2 minutos"
    assert [texts["ru"]("status_outputs", count=n) for n in (1, 2, 5, 11, 22)] == [
        "1 портрет",
        "2 портрета",
        "5 портретов",
        "11 портретов",
        "22 портрета",
    ]
    assert (
        texts["en"]("status_photos", count=1) == "1 photo"
        and texts["en"]("status_photos", count=2) == "2 photos"
    )
    assert texts["id"]("status_photos", count=3) == "3 foto"
    moment = 1_767_225_600  # 2026-01-01 00:00 UTC
    assert texts["de"].when(moment) == "01.01.2026, 00:00:00"
    assert "2026" in texts["ru"].when(moment) and "янв" in texts["ru"].when(moment)
    assert texts["en"].eta(3 * 60) == "3 minutes" and texts["es"].eta(20) == "20 segundos"


def test_stages_and_engine_words_are_translated():
    texts = Texts(load_settings({}))
    assert texts["de"].stage("training step 3/50") == "Training: Schritt 3 von 50"
    assert texts["fr"].stage("generating step 1/25") == "Peinture : étape 1 sur 25"
    assert texts["es"].stage("something new") == "Trabajando"
    assert texts["pt"].receipt_label("consent records") == "registros de consentimento"
    assert texts["uk"].job_word("queued") == "у черзі"
    assert texts["es"].style_label("headshot", "Professional headshot") == "Foto profesional"
    assert texts["en"].style_label("headshot", "Professional headshot") == "Professional headshot"
    assert texts["es"].style_label("operator-added", "My style") == "My style"


def test_platform_tags_resolve_to_a_language_or_english():
    texts = Texts(load_settings({}))
    assert [texts.resolve(tag) for tag in ("es", "pt-BR", "es-419", "de_DE.UTF-8", "uk", "id")] == [
        "es",
        "pt",
        "es",
        "de",
        "uk",
        "id",
    ]
    assert [texts.resolve(tag) for tag in ("ja", "", None, "C", "zz-ZZ")] == ["en"] * 5
    assert language_tag("en_GB.UTF-8") == "en"
    assert texts["ja"] is texts["en"]


def test_each_language_has_its_own_policy_version(tmp_path: Path):
    """Editing one language's policy changes that language's version only."""
    settings = load_settings({})
    before = Texts(settings).policy_versions
    assert len(set(before.values())) == len(before)
    folder = tmp_path / "texts"
    shutil.copytree(TEXTS_DIR, folder)
    spanish = folder / "es.toml"
    spanish.write_text(
        spanish.read_text(encoding="utf-8").replace("Cuánto tiempo:", "Durante cuánto tiempo:"),
        encoding="utf-8",
    )
    after = Texts(settings, folder).policy_versions
    assert after["es"] != before["es"]
    assert {code: v for code, v in after.items() if code != "es"} == {
        code: v for code, v in before.items() if code != "es"
    }


def test_a_new_language_is_one_file(tmp_path: Path):
    """A file with a few keys is a language at once; what it lacks is English."""
    folder = tmp_path / "texts"
    shutil.copytree(TEXTS_DIR, folder)
    (folder / "it.toml").write_text(
        '[language]\nname = "Italiano"\n[buttons]\ncancel = "Ferma"\n', encoding="utf-8"
    )
    texts = Texts(load_settings({}), folder)
    assert texts.resolve("it-IT") == "it" and texts["it"].name == "Italiano"
    assert texts["it"].button("cancel") == "Ferma"
    assert texts["it"].button("agree") == texts["en"].button("agree")
    assert texts["it"].duration(3 * 86400) == "3 giorni"  # Babel's formats come with the code


def test_mains_newcomer_and_likeness_texts_speak_the_users_language():
    """The console's own texts, the 'estimating' ETA, the console schedule line, the missing operator contact
    and the likeness caption lines come from the user's language, not English."""
    texts = Texts(load_settings({}))  # the default operator_contact is empty
    spanish, german, french, russian = texts["es"], texts["de"], texts["fr"], texts["ru"]
    assert spanish("help", "console").startswith("Comandos:")
    assert "photo RUTA" in spanish("help", "console")
    assert spanish("help", "telegram") == spanish("help")  # no [telegram] table: the ordinary text
    assert "Minuten" in german.eta(120, True) and "geschätzt" in german.eta(120, True)
    assert "geschätzt" not in german.eta(120, False)
    assert "votre propre disque" in french.schedule("console")
    assert "opérateur de ce bot" in french.policy_full()
    assert "сигнатура лица" in russian.policy_summary()
    assert russian("likeness", percent=87) == "Сходство 87%"
    with texts.using("de"):
        assert texts("consented", "console", min_photos=3, max_photos=9).startswith("Danke!")
