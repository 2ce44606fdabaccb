"""The operator console, `/ops`: aggregate numbers, invite codes, pause/resume, block/unblock, the log.

Only operators reach it (the conversation answers anyone else as for an unknown command). It shows numbers
and support references, never an image, a name or a platform id. Every action is audited by the engine.
"""

from __future__ import annotations

from collections.abc import Callable

from bot.texts import Texts, utc
from engine.facade import Engine, Overview
from engine.settings import format_duration, parse_duration

DEFAULT_INVITE_USES = 1
DEFAULT_INVITE_VALIDITY = 7 * 86400.0


def size_text(count: int) -> str:
    for unit, size in (("GB", 1024**3), ("MB", 1024**2), ("kB", 1024)):
        if count >= size:
            return f"{count / size:.1f} {unit}"
    return f"{count} B"


class OperatorConsole:
    """`/ops <subcommand> [args]` for one operator; returns the text to answer with.

    `telegram_link(code)` gives the Telegram deep link for an invite code (None when Telegram is off).
    """

    def __init__(self, engine: Engine, texts: Texts, telegram_link: Callable[[str], str | None]):
        self.engine = engine
        self.t = texts
        self.telegram_link = telegram_link

    def text(self, key: str, **values: object) -> str:
        return self.t.default.data["ops"][key].format(**values)  # operator texts: English

    async def run(self, operator: str, args: str) -> str:
        words = args.split()
        sub, rest = (words[0].lower(), words[1:]) if words else ("", [])
        if sub == "" and not rest:
            return self.overview(await self.engine.ops_overview(operator))
        if sub == "invite":
            return await self.invite(operator, rest)
        if sub == "pause" and not rest:
            await self.engine.pause_intake(operator)
            return self.text("paused")
        if sub == "resume" and not rest:
            await self.engine.resume_intake(operator)
            return self.text("resumed")
        if sub in {"block", "unblock"} and len(rest) == 1:
            change = self.engine.block if sub == "block" else self.engine.unblock
            outcome = await change(operator, rest[0])
            return self.text(outcome, ref=rest[0].upper())
        if sub == "log" and not rest:
            return await self.log(operator)
        return self.text("usage")

    def overview(self, o: Overview) -> str:
        medians = ", ".join(
            f"{kind} {format_duration(round(seconds)) if seconds is not None else self.text('not_measured')}"
            for kind, seconds in o.median_seconds.items()
        )
        return self.text(
            "overview",
            consented=o.consented_users,
            models=o.models,
            queued=sum(o.queued.values()),
            running=sum(o.running.values()),
            failed=o.failed_24h,
            medians=medians,
            deliveries=o.deliveries_pending,
            overdue=o.deadlines_overdue,
            blobs=size_text(o.blob_bytes) if o.blob_bytes is not None else self.text("not_measured"),
            gpu=size_text(o.gpu_bytes) if o.gpu_bytes is not None else self.text("no_gpu"),
            intake=self.text("intake_paused" if o.paused else "intake_open"),
        )

    async def invite(self, operator: str, args: list[str]) -> str:
        uses, valid_for = DEFAULT_INVITE_USES, DEFAULT_INVITE_VALIDITY
        try:
            if len(args) > 2:
                raise ValueError("too many arguments")
            if args:
                uses = int(args[0])
            if len(args) == 2:
                valid_for = parse_duration(args[1])
            invite = await self.engine.create_invite(operator, uses, valid_for)
        except ValueError:
            return self.text("invite_bad")
        links = []
        telegram = self.telegram_link(invite.code)
        if telegram:
            links.append(self.text("invite_telegram", link=telegram))
        links += [
            self.text("invite_discord", code=invite.code),
            self.text("invite_console", code=invite.code),
        ]
        reply = self.text(
            "invite", code=invite.code, uses=invite.uses, until=utc(invite.expires_at), links="\n".join(links)
        )
        mode = self.engine.settings.access.mode
        return reply if mode == "invite" else reply + "\n" + self.text("invite_not_open", mode=mode)

    async def log(self, operator: str) -> str:
        entries = await self.engine.ops_log(operator)
        if not entries:
            return self.text("log_empty")
        lines = []
        for entry in entries:
            detail = ", ".join(f"{key} {value}" for key, value in sorted(entry.detail.items()))
            lines.append(
                self.text(
                    "log_line",
                    when=utc(entry.at),
                    action=entry.action.removeprefix("ops_"),
                    operator=entry.operator,
                    detail=f" ({detail})" if detail else "",
                )
            )
        return "\n".join(lines)
