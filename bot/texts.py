"""User-facing texts from `config/texts.toml`, and the privacy policy rendered from the settings.

The retention schedule the user reads (consent text, /privacy, /status) is generated here from the same
settings the code enforces, so the two cannot disagree; on a platform that limits how long a bot may
delete its messages (`Messenger.message_lifetime`), the schedule says the shorter time. The policy version
is a hash of the rendered policy: change the text or a retention setting and every user is asked to
consent again.
"""

from __future__ import annotations

import hashlib
import math
import tomllib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from engine.errors import Refused
from engine.facade import Rejected
from engine.settings import CONFIG_DIR, Settings, format_duration

TEXTS_FILE = CONFIG_DIR / "texts.toml"


class Texts:
    def __init__(self, settings: Settings, path: Path = TEXTS_FILE):
        self.settings = settings
        self.data: dict[str, Any] = tomllib.loads(path.read_text(encoding="utf-8"))
        self.message_caps: dict[str, float] = {}  # platform -> seconds its messages can be deleted
        self.policy_version = hashlib.sha256(
            self.policy_summary().encode() + self._full_raw().encode()
        ).hexdigest()[:16]

    def __call__(self, key: str, platform: str | None = None, **values: Any) -> str:
        """A message from [messages], formatted with `values`; a `[<platform>]` table may replace it."""
        text = self.data.get(platform or "", {}).get(key, self.data["messages"][key])
        return text.format(**values)

    def eta(self, seconds: float, estimated: bool) -> str:
        """ "about N minutes" material: the duration, marked as an estimate until one was measured."""
        text = eta_text(seconds)
        return self("eta_estimated", eta=text) if estimated else text

    def cap_messages(self, platform: str, seconds: float) -> None:
        """`platform` lets a bot delete its messages only for `seconds` (math.inf: no limit)."""
        self.message_caps[platform] = seconds

    def button(self, key: str) -> str:
        return self.data["buttons"][key]

    def setting_button(self, key: str) -> str:
        return self.data["settings_buttons"][key]

    def schedule(
        self, platform: str | None = None, model: float | None = None, messages: float | None = None
    ) -> str:
        """The retention lines; `model` / `messages` are a user's own choices from /settings (None: the
        operator's defaults, as in the policy)."""
        retention, policy = self.settings.retention, self.data["policy"]
        model_key = "schedule_model" if model is None or model == retention.model else "schedule_model_chosen"
        lines = [
            policy["schedule_photos"].format(photos=format_duration(retention.photos)),
            policy[model_key].format(model=format_duration(retention.model if model is None else model)),
            policy["schedule_outputs"].format(outputs=format_duration(retention.outputs)),
        ]
        messages = retention.messages if messages is None else messages
        if platform == "console":
            lines.append(policy["schedule_messages_console"])
        elif messages > 0:
            seconds = min(messages, self.message_caps.get(platform or "", math.inf))
            lines.append(policy["schedule_messages_on"].format(messages=format_duration(seconds)))
        else:
            lines.append(policy["schedule_messages_off"])
        lines.append(policy["schedule_jobs"].format(jobs=format_duration(retention.jobs)))
        return "\n".join(lines)

    def policy_summary(self, platform: str | None = None) -> str:
        upload = self.settings.upload
        return self.data["policy"]["summary"].format(
            min_photos=upload.min_photos, max_photos=upload.max_photos, schedule=self.schedule(platform)
        )

    def _full_raw(self) -> str:
        return self.data["policy"]["full"] + self.settings.operator_contact

    def policy_full(self, platform: str | None = None) -> str:
        return self.data["policy"]["full"].format(
            version=self.policy_version,
            operator=self.settings.operator_contact or self.data["policy"]["no_operator_contact"],
            schedule=self.schedule(platform),
        )

    @property
    def attestation(self) -> str:
        return self.data["policy"]["attestation"]

    def refusal(self, refused: Refused) -> str:
        """The text for an engine refusal: [refusals] has one entry per reason, or one per variant
        (`<reason>_<variant>`) when the refusal names a variant."""
        refusals = self.data["refusals"]
        key = refused.reason
        if f"{key}_{refused.detail.get('variant')}" in refusals:
            key = f"{key}_{refused.detail['variant']}"
        return refusals[key].format(contact=self.settings.operator_contact, **refused.detail)

    def rejection(self, rejected: Rejected) -> tuple[str, str]:
        """(reason, tip) for an intake rejection."""
        reason, tip = self.data["intake"].get(rejected.code, ["This photo cannot be used.", ""])
        values = dict(rejected.detail)
        try:
            return reason.format(**values), tip.format(**values)
        except KeyError:
            return reason, tip


def utc(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, tz=UTC).strftime("%Y-%m-%d %H:%M")


def progress_bar(fraction: float, width: int = 12) -> str:
    filled = round(max(0.0, min(1.0, fraction)) * width)
    return "█" * filled + "░" * (width - filled)


def eta_text(seconds: float) -> str:
    if seconds < 90:
        return f"{max(5, round(seconds / 5) * 5)} seconds"
    if seconds < 5400:
        return f"{round(seconds / 60)} minutes"
    return f"{seconds / 3600:.1f} hours"
