"""Buttons: one codec for their data, and every button the bot shows, built in one place.

A button's data is a route name and an optional argument, `name` or `name:arg` (`cancel:3f9a…`,
`style:headshot`). It comes back from the platform untrusted, so `decode` is strict: a known shape, ASCII,
at most 64 bytes (Telegram's `callback_data` limit; Discord's `custom_id` allows 100 characters). The
conversation's route table (`bot/flow.py`, beside the command table) maps each name to its handler, as
python-telegram-bot's `CallbackQueryHandler(pattern=...)` does.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum

from bot.events import Button
from bot.texts import Texts
from engine.facade import Preset

MAX_DATA_BYTES = 64  # Telegram's limit for callback_data; the smaller of the platforms' limits
_NAME = r"[a-z][a-z_]{0,15}"
_ARG = r"[A-Za-z0-9_-]{1,47}"
_DATA = re.compile(rf"(?P<name>{_NAME})(?::(?P<arg>{_ARG}))?")

Rows = tuple[tuple[Button, ...], ...]


class Route(StrEnum):
    """Every kind of button, by the name its data carries."""

    CONSENT = "consent"  # yes-<policy version> | no (plain `yes`: buttons sent before versions)
    TRAIN = "train"
    STYLE = "style"  # a preset key
    STYLES = "styles"  # show the style picker again
    CANCEL = "cancel"  # a job id
    FORGET = "forget"  # yes | no
    SETTING = "set"  # a settings choice key
    LANGUAGE_MENU = "language"  # show the language picker
    LANGUAGE = "lang"  # a language code


@dataclass(frozen=True)
class Pressed:
    """Decoded button data: which route, with which (still unauthorised) argument."""

    route: Route
    arg: str = ""


def encode(route: Route, arg: str = "") -> str:
    """The data for a button; raises ValueError for an argument the codec could not read back."""
    data = f"{route.value}:{arg}" if arg else route.value
    if decode(data) != Pressed(route, arg):
        raise ValueError(f"button argument does not fit the codec: {route.value}:{arg[:20]!r}")
    return data


def decode(data: str) -> Pressed | None:
    """The route and argument in button data; None for anything malformed, too long or unknown."""
    if len(data.encode("utf-8", "surrogatepass")) > MAX_DATA_BYTES:
        return None
    match = _DATA.fullmatch(data)
    if match is None:
        return None
    try:
        route = Route(match["name"])
    except ValueError:
        return None
    return Pressed(route, match["arg"] or "")


class Buttons:
    """Every button the bot shows, each built only here: its label from `config/texts/<language>.toml` in
    the language being spoken (a style's from `[styles]`, else its preset), its data from `encode`."""

    def __init__(self, texts: Texts, presets: Mapping[str, Preset]):
        self.t = texts
        self.presets = presets

    def _one(self, label_key: str, route: Route, arg: str = "") -> Button:
        return Button(self.t.button(label_key), encode(route, arg))

    def consent(self) -> Rows:
        """Agree / decline. "Agree" names the policy version it is shown with (`yes-<version>`), so a press
        records consent to the text the user read, even after switching language or a policy update."""
        agree = self._one("agree", Route.CONSENT, f"yes-{self.t.policy_version}")
        return ((agree, self._one("decline", Route.CONSENT, "no")),)

    def train(self) -> Rows:
        return ((self._one("train", Route.TRAIN),),)

    def cancel(self, job_id: str) -> Rows:
        return ((self._one("cancel", Route.CANCEL, job_id),),)

    def styles(self) -> Rows:
        """One button per preset, two a row: the still styles, then the animated (video) ones on their own rows."""
        rows: list[tuple[Button, ...]] = []
        for video in (False, True):
            buttons = [
                Button(self.t.style_label(key, preset.label), encode(Route.STYLE, key))
                for key, preset in self.presets.items()
                if preset.video == video
            ]
            rows += [tuple(buttons[i : i + 2]) for i in range(0, len(buttons), 2)]
        return tuple(rows)

    def another_style(self) -> Rows:
        return ((self._one("another_style", Route.STYLES),),)

    def forget(self) -> Rows:
        return ((self._one("forget_yes", Route.FORGET, "yes"), self._one("forget_no", Route.FORGET, "no")),)

    def settings(self, choices: Iterable[str]) -> Rows:
        """One row per settings choice (keys of `[settings_buttons]`), then the language row."""
        rows = [(Button(self.t.setting_button(key), encode(Route.SETTING, key)),) for key in choices]
        return (*rows, (self._one("language", Route.LANGUAGE_MENU),))

    def languages(self) -> Rows:
        """Every language, each labelled in itself ("Español"), two a row."""
        buttons = [
            Button(language.name, encode(Route.LANGUAGE, code)) for code, language in self.t.languages.items()
        ]
        return tuple(tuple(buttons[i : i + 2]) for i in range(0, len(buttons), 2))
