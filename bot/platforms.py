"""The chat platforms `python -m bot` can run, by the name of their settings section.

Each entry names an adapter module with two things: `SETTINGS`, the dataclass its `[name]` section of the
settings is read into (`engine.settings.Section.read`: the same `LIKENESS_<NAME>_<KEY>` names and one-line
errors as every setting), and `frontend(settings, conversation) -> Frontend | None`, None when the platform
is not configured (no token). Adding a platform adds a line here (see docs/architecture.md).
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import TYPE_CHECKING, Any

from engine.settings import Settings, SettingsError

if TYPE_CHECKING:
    from bot.flow import Conversation
    from bot.frontend import Frontend

PLATFORMS: dict[str, str] = {
    "telegram": "bot.telegram_bot",
    "discord": "bot.discord_bot",
}


def adapter(name: str) -> ModuleType:
    return importlib.import_module(PLATFORMS[name])


def platform_settings(settings: Settings) -> dict[str, Any]:
    """Every platform's settings, typed and checked (configured or not); raises SettingsError in one line."""
    for name in settings.platforms:
        if name not in PLATFORMS:
            raise SettingsError(f"setting [{name}]: unknown section (check the spelling)")
    return {name: settings.platform(name).read(adapter(name).SETTINGS) for name in PLATFORMS}


def build_frontends(settings: Settings, conversation: Conversation) -> list[Frontend]:
    """A front-end for every configured platform."""
    built = (
        adapter(name).frontend(options, conversation) for name, options in platform_settings(settings).items()
    )
    return [frontend for frontend in built if frontend is not None]


def token_names() -> list[str]:
    """The settings that switch a platform on, for the operator's hint when none is set."""
    return [f"LIKENESS_{name.upper()}_TOKEN" for name in PLATFORMS]
