"""The README's operator documentation stays in step with the settings the code enforces."""

import tomllib
from pathlib import Path

from bot.texts import Texts
from engine.settings import DEFAULTS_FILE, load_settings

README = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")


def _env_names() -> list[str]:
    table = tomllib.loads(DEFAULTS_FILE.read_text(encoding="utf-8"))
    names = []
    for key, value in table.items():
        if isinstance(value, dict):
            names += [f"LIKENESS_{key}_{inner}".upper() for inner in value]
        else:
            names.append(f"LIKENESS_{key}".upper())
    return names


def test_every_setting_is_documented_in_the_readme():
    missing = [name for name in _env_names() if f"`{name}`" not in README]
    assert missing == []


def test_readme_retention_schedule_is_the_one_users_are_shown():
    schedule = Texts(load_settings({})).schedule()
    assert schedule in README
