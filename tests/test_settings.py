"""Settings: defaults from config/default.toml, `.env` and LIKENESS_* overrides, one-line errors."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import pytest

from bot.discord_bot import DiscordSettings
from bot.platforms import platform_settings
from bot.telegram_bot import TelegramSettings
from engine.settings import (
    CONFIG_DIR,
    DEFAULTS_FILE,
    Duration,
    OptionalDuration,
    Settings,
    SettingsError,
    format_duration,
    load_settings,
    parse_duration,
)


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """A clean environment whose presets file exists (config/presets.toml is written elsewhere)."""
    presets = tmp_path / "presets.toml"
    presets.write_text('[portrait]\nprompt = "a portrait"\n')
    return {"LIKENESS_ENGINE_PRESETS": str(presets)}


def telegram(settings: Settings) -> TelegramSettings:
    return settings.platform("telegram").read(TelegramSettings)


def discord(settings: Settings) -> DiscordSettings:
    return settings.platform("discord").read(DiscordSettings)


def load_all(env: dict[str, str], defaults_file: Path = DEFAULTS_FILE) -> Settings:
    """The settings as `python -m bot` checks them at start: the engine's and every platform's."""
    settings = load_settings(env, defaults_file)
    platform_settings(settings)
    return settings


def defaults_with(tmp_path: Path, old: str, new: str) -> Path:
    """A copy of the shipped defaults with one edit."""
    text = DEFAULTS_FILE.read_text()
    assert old in text
    path = tmp_path / "edited.toml"
    path.write_text(text.replace(old, new, 1))
    return path


def test_defaults_load(env: dict[str, str]) -> None:
    settings = load_settings(env)
    assert settings.data_dir == Path("var")
    assert settings.master_key == ""
    assert telegram(settings).api_url == "https://api.telegram.org"
    assert telegram(settings).protect_content is True
    assert discord(settings).token == ""
    assert discord(settings).api_url == "https://discord.com/api"
    assert settings.engine.images_per_request == 4
    assert settings.engine.lease == 120.0
    assert isinstance(settings.engine.lease, Duration)
    assert settings.engine.poll_interval == 1.0
    assert settings.engine.presets_path == Path(env["LIKENESS_ENGINE_PRESETS"])
    assert (settings.upload.min_photos, settings.upload.max_photos) == (6, 20)
    assert settings.retention.photos == 86400.0
    assert settings.retention.model == 7 * 86400.0
    assert settings.retention.messages == 0.0
    assert isinstance(settings.retention.messages, OptionalDuration)
    assert settings.retention.sweep_interval == 60.0
    assert settings.provenance.deliver_as == "files"


def test_relative_presets_path_is_in_the_config_folder(env: dict[str, str]) -> None:
    engine = load_settings(env).engine
    assert replace(engine, presets="presets.toml").presets_path == CONFIG_DIR / "presets.toml"
    assert replace(engine, presets="/etc/p.toml").presets_path == Path("/etc/p.toml")


def test_environment_overrides(env: dict[str, str]) -> None:
    env |= {
        "LIKENESS_DATA_DIR": "/srv/likeness",
        "LIKENESS_LOG_LEVEL": "debug",
        "LIKENESS_TELEGRAM_TOKEN": "123:abc",
        "LIKENESS_TELEGRAM_PROTECT_CONTENT": "no",
        "LIKENESS_RETENTION_PHOTOS": "15m",
        "LIKENESS_RETENTION_MESSAGES": "47h",
        "LIKENESS_UPLOAD_MAX_PHOTOS": " 12 ",
        "LIKENESS_ENGINE_EMBEDDED_WORKER": "0",
    }
    settings = load_settings(env)
    assert settings.data_dir == Path("/srv/likeness")
    assert settings.log_level == "debug"
    assert telegram(settings).token == "123:abc"
    assert telegram(settings).protect_content is False
    assert settings.retention.photos == 900.0
    assert settings.retention.messages == 47 * 3600.0
    assert settings.upload.max_photos == 12
    assert settings.engine.embedded_worker is False
    assert settings.retention.model == 7 * 86400.0  # untouched


@pytest.mark.parametrize(
    "text, seconds",
    [("30s", 30), ("15m", 900), ("24h", 86400), ("7d", 604800), ("90", 90), ("1.5h", 5400), (" 2 m ", 120)],
)
def test_durations(env: dict[str, str], text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds
    env["LIKENESS_RETENTION_OUTPUTS"] = text
    assert load_settings(env).retention.outputs == seconds


@pytest.mark.parametrize("text", ["off", "OFF", "0"])
def test_messages_can_be_off(env: dict[str, str], text: str) -> None:
    env["LIKENESS_RETENTION_MESSAGES"] = text
    assert load_settings(env).retention.messages == 0


@pytest.mark.parametrize("text", ["", "soon", "5 weeks", "-1h", "h", "1h30m"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError, match="expected a duration"):
        parse_duration(text)


@pytest.mark.parametrize(
    "seconds, text",
    [(86400, "1 day"), (172800, "2 days"), (3600, "1 hour"), (120, "2 minutes"), (90, "90 seconds")],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@pytest.mark.parametrize(
    "overrides, name",
    [
        ({"LIKENESS_UPLOAD_MAX_MB": "lots"}, "LIKENESS_UPLOAD_MAX_MB"),
        ({"LIKENESS_UPLOAD_MAX_MB": "2.5"}, "LIKENESS_UPLOAD_MAX_MB"),
        ({"LIKENESS_UPLOAD_MAX_MB": "1\n2"}, "LIKENESS_UPLOAD_MAX_MB"),
        ({"LIKENESS_RETENTION_PHOTOS": "soon"}, "LIKENESS_RETENTION_PHOTOS"),
        ({"LIKENESS_RETENTION_PHOTOS": "0s"}, "LIKENESS_RETENTION_PHOTOS"),
        ({"LIKENESS_RETENTION_MESSAGES": "never"}, "LIKENESS_RETENTION_MESSAGES"),
        ({"LIKENESS_TELEGRAM_PROTECT_CONTENT": "maybe"}, "LIKENESS_TELEGRAM_PROTECT_CONTENT"),
        ({"LIKENESS_TELEGRAM_API_URL": "api.telegram.org"}, "LIKENESS_TELEGRAM_API_URL"),
        ({"LIKENESS_DISCORD_API_URL": "ftp://discord.com"}, "LIKENESS_DISCORD_API_URL"),
        (
            {"LIKENESS_UPLOAD_MIN_PHOTOS": "10", "LIKENESS_UPLOAD_MAX_PHOTOS": "5"},
            "LIKENESS_UPLOAD_MAX_PHOTOS",
        ),
        ({"LIKENESS_UPLOAD_MIN_PHOTOS": "0"}, "LIKENESS_UPLOAD_MIN_PHOTOS"),
        ({"LIKENESS_ENGINE_IMAGES_PER_REQUEST": "11"}, "LIKENESS_ENGINE_IMAGES_PER_REQUEST"),
        ({"LIKENESS_ENGINE_CANDIDATES": "0"}, "LIKENESS_ENGINE_CANDIDATES"),
        ({"LIKENESS_ENGINE_MIN_LIKENESS": "101"}, "LIKENESS_ENGINE_MIN_LIKENESS"),
        ({"LIKENESS_ENGINE_MIN_LIKENESS": "high"}, "LIKENESS_ENGINE_MIN_LIKENESS"),
        ({"LIKENESS_ENGINE_PRESETS": "/nonexistent/presets.toml"}, "LIKENESS_ENGINE_PRESETS"),
        ({"LIKENESS_LOG_LEVEL": "LOUD"}, "LIKENESS_LOG_LEVEL"),
        ({"LIKENESS_PROVENANCE_DELIVER_AS": "fax"}, "LIKENESS_PROVENANCE_DELIVER_AS"),
        ({"LIKENESS_PROVENANCE_C2PA_CERT": "cert.pem"}, "LIKENESS_PROVENANCE_C2PA_KEY"),
    ],
)
def test_bad_settings_fail_in_one_line(env: dict[str, str], overrides: dict[str, str], name: str) -> None:
    env |= overrides
    with pytest.raises(SettingsError) as error:
        load_all(env)
    message = str(error.value)
    assert "\n" not in message
    assert name in message


@pytest.mark.parametrize(
    "old, new, name",
    [
        ("[upload]\n", "[upload]\nmax_photo = 3\n", "max_photo"),
        ('log_level = "INFO"\n', 'log_level = "INFO"\ncolour = "blue"\n', "colour"),
        ("max_attempts = 3\n", "", "LIKENESS_ENGINE_MAX_ATTEMPTS"),
        ("max_mb = 20\n", 'max_mb = "twenty"\n', "LIKENESS_UPLOAD_MAX_MB"),
        ("max_mb = 20\n", "max_mb = 20.5\n", "LIKENESS_UPLOAD_MAX_MB"),
        ("protect_content = true\n", "protect_content = 2\n", "LIKENESS_TELEGRAM_PROTECT_CONTENT"),
        ("[telegram]\n", "[telegram]\nprotect = true\n", "[telegram] protect"),
        ("[discord]\n", "[discrod]\n", "[discrod]"),
        ('api_url = "https://discord.com/api"\n', "", "LIKENESS_DISCORD_API_URL"),
        ("[upload]\n", "[upload\n", "edited.toml"),
    ],
)
def test_bad_defaults_file_fails_in_one_line(
    env: dict[str, str], tmp_path: Path, old: str, new: str, name: str
) -> None:
    with pytest.raises(SettingsError) as error:
        load_all(env, defaults_with(tmp_path, old, new))
    assert "\n" not in str(error.value)
    assert name in str(error.value)


def test_section_given_as_a_value_fails_in_one_line(env: dict[str, str], tmp_path: Path) -> None:
    text = DEFAULTS_FILE.read_text()
    start, end = text.index("[upload]"), text.index("[retention]")
    path = tmp_path / "edited.toml"
    path.write_text("upload = 3\n" + text[:start] + text[end:])
    with pytest.raises(SettingsError) as error:
        load_settings(env, path)
    assert "\n" not in str(error.value)
    assert "upload" in str(error.value)


def test_whole_float_in_defaults_file_is_an_int(env: dict[str, str], tmp_path: Path) -> None:
    settings = load_settings(env, defaults_with(tmp_path, "max_mb = 20\n", "max_mb = 15.0\n"))
    assert settings.upload.max_mb == 15
    assert isinstance(settings.upload.max_mb, int)


def test_dotenv_is_read_and_the_environment_wins(
    env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in list(os.environ):
        if name.startswith("LIKENESS_"):
            monkeypatch.delenv(name)
    (tmp_path / ".env").write_text(
        "# operator's secrets\n"
        "LIKENESS_TELEGRAM_TOKEN=from-dotenv\n"
        "LIKENESS_RETENTION_PHOTOS=1h\n"
        f"LIKENESS_ENGINE_PRESETS={env['LIKENESS_ENGINE_PRESETS']}\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LIKENESS_RETENTION_PHOTOS", "2h")
    settings = load_settings()
    assert telegram(settings).token == "from-dotenv"
    assert settings.retention.photos == 7200.0


def test_a_platform_section_is_read_by_its_adapter_not_the_engine(env: dict[str, str]) -> None:
    env["LIKENESS_TELEGRAM_API_URL"] = "api.telegram.org"
    settings = load_settings(env)  # what `python -m engine` reads: no platform's settings
    assert settings.platform("telegram").env == {"LIKENESS_TELEGRAM_API_URL": "api.telegram.org"}
    with pytest.raises(SettingsError, match=r"^setting LIKENESS_TELEGRAM_API_URL: expected an http"):
        platform_settings(settings)  # what `python -m bot` checks before it starts anything


def test_python_m_bot_stops_on_a_bad_platform_setting_in_one_line(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from bot.__main__ import main

    for name, value in {**env, "LIKENESS_DISCORD_API_URL": "ftp://discord.com"}.items():
        monkeypatch.setenv(name, value)
    assert main([]) == 2
    err = capsys.readouterr().err
    assert err.startswith("likeness: setting LIKENESS_DISCORD_API_URL:") and err.count("\n") == 1
