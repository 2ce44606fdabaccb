"""What every update passes before the conversation handles it, on every platform alike:
counted (metrics) → flood control → the operator console → access (invite codes, allowlist).

Nothing here downloads or stores anything: a flood, a stranger or a non-operator's `/ops` is answered (or,
for a flood, ignored) before any handler runs, so no photo of theirs is ever fetched.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from bot.events import ButtonPress, Command, Event, PhotoMessage, TextMessage
from bot.operator import OperatorConsole
from bot.texts import Texts
from engine.errors import Refused
from engine.facade import Engine, Verdict

# Commands anyone may use before being admitted: they explain, or act only on what is already stored.
OPEN_COMMANDS = frozenset({"help", "privacy", "status", "mydata", "forget", "withdraw", "cancel"})
OPEN_BUTTONS = ("forget:",)  # confirming /forget


@dataclass(frozen=True)
class Screened:
    """The gate's decision: `stop` handling here; `answer` (if any) is what the user is told."""

    stop: bool
    answer: str | None = None


PASS = Screened(False)
IGNORE = Screened(True)


def event_kind(event: Event) -> str:
    """The metric label of an event: command, button, photo or text."""
    if isinstance(event, Command):
        return "command"
    if isinstance(event, ButtonPress):
        return "button"
    if isinstance(event, PhotoMessage):
        return "photo"
    return "text" if isinstance(event, TextMessage) else "other"


class Gate:
    def __init__(self, engine: Engine, texts: Texts, telegram_link: Callable[[str], str | None]):
        self.engine = engine
        self.t = texts
        self.console = OperatorConsole(engine, texts, telegram_link)

    async def screen(self, event: Event, user_id: str) -> Screened:
        chat = event.chat
        self.engine.note_update(chat.platform, event_kind(event))
        verdict = self.engine.admit_update(user_id)
        if verdict is Verdict.DROP:
            return IGNORE
        if verdict is Verdict.WARN:
            return Screened(True, self.t.refusal(Refused("flood")))
        if isinstance(event, Command) and event.name == "ops":
            if chat.private and self.engine.is_operator(user_id):
                return Screened(True, await self.console.run(user_id, event.args))
            return Screened(True, self.t("unknown_command"))  # exactly as for any unknown command
        if not chat.private:
            return PASS  # groups: nothing is stored there; the conversation points to the private chat
        if isinstance(event, Command) and event.name == "start" and event.args.strip():
            try:
                await self.engine.redeem_invite(user_id, event.args)
            except Refused as refusal:
                return Screened(True, self.t.refusal(refusal))
        if isinstance(event, Command) and event.name in OPEN_COMMANDS:
            return PASS
        if isinstance(event, ButtonPress) and event.data.startswith(OPEN_BUTTONS):
            return PASS
        try:
            await self.engine.require_access(user_id)
        except Refused as refusal:
            return Screened(True, self.t.refusal(refusal))
        return PASS
