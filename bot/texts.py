"""User-facing texts in every language, from `config/texts/<code>.toml`, and the privacy policy rendered
from the settings.

Each language is one file with the same keys as `en.toml` (English is the reference and the fallback for a
key a file lacks). Plurals follow the language's CLDR plural rules; durations and dates are written by Babel
in the language's own format, never assembled from pieces. The retention schedule the user reads (consent
text, /privacy, /status) is generated here from the same settings the code enforces, in every language, so
none of them can disagree with the code; on a platform that limits how long a bot may delete its messages
(`Messenger.message_lifetime`), the schedule says the shorter time. Each language has its own policy version, a hash of its rendered
policy: change the text (or a retention setting) and that language's users are asked to consent again.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime, timedelta
from functools import cached_property
from pathlib import Path
from typing import Any

from babel import Locale, UnknownLocaleError
from babel.dates import format_datetime, format_timedelta

from engine.errors import Refused
from engine.facade import Rejected
from engine.settings import CONFIG_DIR, Settings, SettingsError

log = logging.getLogger(__name__)

TEXTS_DIR = CONFIG_DIR / "texts"
DEFAULT_LANGUAGE = "en"
_CURRENT: ContextVar[str] = ContextVar("language", default=DEFAULT_LANGUAGE)  # of the event being answered
_EXACT_UNITS = (("day", 86400), ("hour", 3600), ("minute", 60))
_STAGES = (  # the engine's progress stages -> a key of [stages] (with its numbers)
    (re.compile(r"starting"), "starting"),
    (re.compile(r"preparing photos"), "preparing"),
    (re.compile(r"training step (?P<step>\d+)/(?P<steps>\d+)"), "training"),
    (re.compile(r"training done"), "training_done"),
    (re.compile(r"saving your model"), "saving"),
    (re.compile(r"loading your model"), "loading"),
    (re.compile(r"generating step (?P<step>\d+)/(?P<steps>\d+)"), "generating"),
    (re.compile(r"marking as AI-generated"), "marking"),
    (re.compile(r"done"), "done"),
)


def language_tag(tag: str | None) -> str:
    """The language part of a platform's tag: 'pt-BR', 'es_419', 'de_DE.UTF-8' -> 'pt', 'es', 'de'."""
    return re.split(r"[-_.@]", (tag or "").strip().lower(), maxsplit=1)[0]


class Language:
    """One language's texts and formats. Keys a file lacks fall back to English (`fallback`)."""

    def __init__(
        self,
        code: str,
        data: dict[str, Any],
        settings: Settings,
        fallback: Language | None = None,
        message_caps: dict[str, float] | None = None,
    ):
        self.code = code
        self.data = data
        self.settings = settings
        self.fallback = fallback
        self.message_caps = {} if message_caps is None else message_caps  # shared by every language
        try:
            self.locale = Locale.parse(code)
        except (ValueError, UnknownLocaleError):
            raise SettingsError(
                f"texts file {code}.toml: {code!r} is not a language code Babel knows"
            ) from None
        self.policy_version = hashlib.sha256(
            self.policy_summary().encode() + self._full_raw().encode()
        ).hexdigest()[:16]

    @property
    def name(self) -> str:
        """The language's name in itself ("Español"), for the /language buttons."""
        return self.data.get("language", {}).get("name") or self.locale.get_display_name(self.code).title()

    def lookup(self, table: str, key: str) -> Any:
        """The raw entry `[table] key`, from this file or else English; KeyError if neither has it."""
        value = self.data.get(table, {}).get(key)
        if value is None:
            if self.fallback is None:
                raise KeyError(f"[{table}] {key}")
            return self.fallback.lookup(table, key)
        return value

    def plural(self, entry: str | dict[str, str], count: Any) -> str:
        """The form of a plural table for `count` (CLDR categories of this language; 'other' otherwise)."""
        if isinstance(entry, str):
            return entry
        return entry.get(self.locale.plural_form(count)) or entry["other"]

    def text(self, table: str, key: str, **values: Any) -> str:
        entry = self.lookup(table, key)
        return self.plural(entry, values.get("count", 0)).format(**values)

    def __call__(self, key: str, platform: str | None = None, **values: Any) -> str:
        """A message from [messages], formatted with `values` (a plural one is chosen by `count`); a
        `[<platform>]` table ([console]) may replace it."""
        table = "messages"
        if platform:
            try:
                self.lookup(platform, key)
                table = platform
            except KeyError:
                pass
        return self.text(table, key, **values)

    def button(self, key: str) -> str:
        return self.lookup("buttons", key)

    def setting_button(self, key: str) -> str:
        return self.lookup("settings_buttons", key)

    def command(self, name: str) -> str:
        """A command's description for the platform's command menu."""
        return self.lookup("commands", name)

    def discord(self, key: str) -> str:
        return self.lookup("discord", key)

    def job_word(self, key: str) -> str:
        """A job's kind (train, generate) or state (queued, running) in /status."""
        try:
            return self.lookup("jobs", key)
        except KeyError:
            return key

    def receipt_label(self, key: str) -> str:
        try:
            return self.lookup("receipt", key.replace(" ", "_"))
        except KeyError:
            return key

    def style_label(self, key: str, default: str) -> str:
        """A preset's label: [styles] of this language, else the preset's own label (config/presets.toml)."""
        if self.fallback is None:
            return default  # English: the operator's label in presets.toml
        return self.data.get("styles", {}).get(key) or default

    def stage(self, stage: str) -> str:
        """The engine's progress stage ('training step 3/50') in this language."""
        for pattern, key in _STAGES:
            match = pattern.fullmatch(stage.strip())
            if match:
                return self.text("stages", key, **match.groupdict())
        return self.text("stages", "working")

    # -- formats -----------------------------------------------------------------------------------------
    def duration(self, seconds: float) -> str:
        """The shortest exact form of a duration: 90 -> '90 seconds', 86400 -> '1 day', in this language."""
        unit = next(
            (name for name, size in _EXACT_UNITS if seconds >= size and seconds % size == 0), "second"
        )
        return self._timedelta(seconds, unit)

    def eta(self, seconds: float, estimated: bool = False) -> str:
        """A rounded estimate: '15 seconds', '4 minutes', '2 hours'; marked as an estimate ('estimating')
        until a duration was measured."""
        if seconds < 90:
            text = self._timedelta(max(5, round(seconds / 5) * 5), "second")
        elif seconds < 5400:
            text = self._timedelta(round(seconds / 60) * 60, "minute")
        else:
            text = self._timedelta(round(seconds / 3600) * 3600, "hour")
        return self("eta_estimated", eta=text) if estimated else text

    def _timedelta(self, seconds: float, unit: str) -> str:
        # An infinite threshold makes Babel use exactly `unit` (its granularity) instead of rounding up.
        return format_timedelta(
            timedelta(seconds=seconds), granularity=unit, threshold=math.inf, locale=self.locale
        )

    def when(self, timestamp: float) -> str:
        """A moment in UTC, in this language's date format (the texts add 'UTC')."""
        moment = datetime.fromtimestamp(timestamp, tz=UTC)
        return format_datetime(moment, "medium", tzinfo=UTC, locale=self.locale)

    # -- the privacy policy ------------------------------------------------------------------------------
    def schedule(
        self, platform: str | None = None, model: float | None = None, messages: float | None = None
    ) -> str:
        """The retention lines; `model` / `messages` are a user's own choices from /settings (None: the
        operator's defaults, as in the policy)."""
        retention = self.settings.retention
        model_key = "schedule_model" if model is None or model == retention.model else "schedule_model_chosen"
        lines = [
            self.text("policy", "schedule_photos", photos=self.duration(retention.photos)),
            self.text("policy", model_key, model=self.duration(retention.model if model is None else model)),
            self.text("policy", "schedule_outputs", outputs=self.duration(retention.outputs)),
        ]
        messages = retention.messages if messages is None else messages
        if platform == "console":
            lines.append(self.text("policy", "schedule_messages_console"))
        elif messages > 0:
            seconds = min(messages, self.message_caps.get(platform or "", math.inf))
            lines.append(self.text("policy", "schedule_messages_on", messages=self.duration(seconds)))
        else:
            lines.append(self.text("policy", "schedule_messages_off"))
        lines.append(self.text("policy", "schedule_jobs", jobs=self.duration(retention.jobs)))
        return "\n".join(lines)

    def policy_summary(self, platform: str | None = None) -> str:
        upload = self.settings.upload
        return self.text(
            "policy",
            "summary",
            min_photos=upload.min_photos,
            max_photos=upload.max_photos,
            schedule=self.schedule(platform),
        )

    def _full_raw(self) -> str:
        return self.lookup("policy", "full") + self.settings.operator_contact

    def policy_full(self, platform: str | None = None) -> str:
        return self.text(
            "policy",
            "full",
            version=self.policy_version,
            operator=self.settings.operator_contact or self.lookup("policy", "no_operator_contact"),
            schedule=self.schedule(platform),
        )

    @property
    def attestation(self) -> str:
        return self.lookup("policy", "attestation")

    # -- engine outcomes ---------------------------------------------------------------------------------
    def refusal(self, refused: Refused) -> str:
        """The text for an engine refusal: [refusals] has one entry per reason, or one per variant
        (`<reason>_<variant>`) when the refusal names a variant."""
        key = refused.reason
        variant = f"{key}_{refused.detail.get('variant')}"
        try:
            self.lookup("refusals", variant)
            key = variant
        except KeyError:
            pass
        contact = self.settings.operator_contact or self.lookup("policy", "no_operator_contact")
        values = {"contact": contact, **refused.detail}
        if refused.reason == "quota":  # the engine's words and times, in this language
            values["what"] = self.lookup("quotas", f"{values.get('kind')}_count")
            if "period_seconds" in values:
                values["period"] = self.duration(values["period_seconds"])
            if "renews_at" in values:
                values["renews"] = self.text("messages", "at_utc", when=self.when(values["renews_at"]))
        return self.text("refusals", key, **values)

    def rejection(self, rejected: Rejected) -> tuple[str, str]:
        """(reason, tip) for an intake rejection."""
        try:
            reason, tip = self.lookup("intake", rejected.code)
        except KeyError:
            reason, tip = self.lookup("intake", "other")
        values = dict(rejected.detail)
        try:
            return reason.format(**values), tip.format(**values)
        except KeyError:
            return reason, tip


class Texts:
    """Every language, by code. `texts["es"]` is Spanish; an unknown code gives English.

    Inside `with texts.using(code):` (the conversation wraps each event in it) `texts` itself speaks that
    language: `texts("help")`, `texts.button("agree")` and every other `Language` attribute are the current
    language's. Outside, they are English.
    """

    def __init__(self, settings: Settings, directory: Path = TEXTS_DIR):
        self.settings = settings
        self.message_caps: dict[str, float] = {}  # platform -> seconds its messages can be deleted
        read = _read(directory / f"{DEFAULT_LANGUAGE}.toml")
        english = Language(DEFAULT_LANGUAGE, read, settings, message_caps=self.message_caps)
        self.languages: dict[str, Language] = {DEFAULT_LANGUAGE: english}
        for path in sorted(directory.glob("*.toml")):
            if path.stem != DEFAULT_LANGUAGE:
                self.languages[path.stem] = Language(
                    path.stem, _read(path), settings, english, self.message_caps
                )
        self.default = english

    def cap_messages(self, platform: str, seconds: float) -> None:
        """`platform` lets a bot delete its messages only for `seconds` (math.inf: no limit)."""
        self.message_caps[platform] = seconds

    def __getitem__(self, code: str | None) -> Language:
        return self.languages.get(code or "", self.default)

    def resolve(self, tag: str | None) -> str:
        """The supported language for a platform's tag ('pt-BR' -> 'pt'); English if unsupported."""
        code = language_tag(tag)
        return code if code in self.languages else DEFAULT_LANGUAGE

    @property
    def current(self) -> Language:
        """The language of the event being answered (English outside `using`)."""
        return self[_CURRENT.get()]

    @contextmanager
    def using(self, code: str) -> Iterator[Language]:
        """Speak `code` (a supported language code) until the block ends; blocks nest."""
        token = _CURRENT.set(code if code in self.languages else DEFAULT_LANGUAGE)
        try:
            yield self.current
        finally:
            _CURRENT.reset(token)

    def __call__(self, key: str, platform: str | None = None, **values: Any) -> str:
        return self.current(key, platform, **values)

    def __getattr__(self, name: str) -> Any:
        if name in {"default", "languages"}:  # not set yet (during __init__ or unpickling)
            raise AttributeError(name)
        return getattr(self.current, name)

    @cached_property
    def policy_versions(self) -> dict[str, str]:
        return {code: language.policy_version for code, language in self.languages.items()}


def _read(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise SettingsError(f"texts file {path.name}: {error}") from None


def progress_bar(fraction: float, width: int = 12) -> str:
    filled = round(max(0.0, min(1.0, fraction)) * width)
    return "█" * filled + "░" * (width - filled)


def utc(timestamp: float) -> str:
    """A moment for the operator's console (English, like every operator text): '2026-01-31 14:05'."""
    return datetime.fromtimestamp(timestamp, tz=UTC).strftime("%Y-%m-%d %H:%M")
