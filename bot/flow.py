"""The conversation, once for every platform: consent → upload → train → style → deliver → forget.

Adapters turn platform updates into `bot.events` and hand them to `Conversation.dispatch`, the one safe
entry point: an error is logged once and the user gets a short apology. Answers go out through the
adapter's `Messenger`. Commands and buttons are routed by two tables side by side. Button data is never
trusted: it is decoded strictly (`bot.buttons`), every press acts on the presser's own data, a press that
names a job is checked against the job's owner, and a press in a private chat by anyone but that chat's
user changes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from bot.buttons import Buttons, Route, decode
from bot.events import ButtonPress, Chat, Command, Event, Messenger, PhotoMessage, Reply, TextMessage
from bot.gate import Gate
from bot.texts import DEFAULT_LANGUAGE, Texts, progress_bar
from engine.errors import Refused
from engine.facade import Accepted, Allowance, Engine, Rejected

log = logging.getLogger(__name__)

# The command menu, in this order; each description is `[commands] <name>` in the user's language.
COMMANDS = (
    "start",
    "train",
    "styles",
    "status",
    "settings",
    "mydata",
    "forget",
    "cancel",
    "privacy",
    "language",
    "help",
)


MODEL_CHOICES = {"model_now": 3600.0, "model_day": 86400.0, "model_week": 7 * 86400.0}
MESSAGE_CHOICES = {"messages_off": 0.0, "messages_day": 86400.0}

Apology = Callable[[str], Awaitable[object]]


@dataclass(frozen=True)
class ButtonRoute:
    """What a button does: `run(press, user_id, arg)`, once `accepts(arg)` holds and, where `owns` is given,
    the presser owns what `arg` names (else the presser only gets the `not_yours` toast)."""

    run: Callable[[ButtonPress, str, str], Awaitable[None]]
    accepts: Callable[[str], bool]
    owns: Callable[[str, str], Awaitable[bool]] | None = None


def no_argument(arg: str) -> bool:
    return arg == ""


def one_of(*allowed: str) -> Callable[[str], bool]:
    return lambda arg: arg in allowed


def consent_answer(arg: str) -> bool:
    return arg in ("yes", "no") or re.fullmatch(r"yes-[0-9a-f]{16}", arg) is not None


def some_id(arg: str) -> bool:
    return arg != ""  # the codec already bounds its length and alphabet


class Conversation:
    def __init__(self, engine: Engine, texts: Texts):
        self.engine = engine
        self.t = texts
        self.buttons = Buttons(texts, engine.presets)
        self.messengers: dict[str, Messenger] = {}  # platform -> its adapter's Messenger
        self.gate = Gate(engine, texts, self.telegram_invite_link)
        self._handlers: dict[str, Callable[[Command, str], Awaitable[None]]] = {
            "start": self.start,
            "help": self.help,
            "privacy": self.privacy,
            "train": self.train,
            "styles": self.styles,
            "status": self.status,
            "settings": self.settings,
            "mydata": self.mydata,
            "forget": self.forget,
            "withdraw": self.forget,
            "cancel": self.cancel,
            "language": self.language,
        }
        self._routes: dict[Route, ButtonRoute] = {
            Route.CONSENT: ButtonRoute(self.on_consent, consent_answer),
            Route.TRAIN: ButtonRoute(self.train, no_argument),
            Route.STYLE: ButtonRoute(self.on_style, lambda key: key in self.engine.presets),
            Route.STYLES: ButtonRoute(self.on_styles, no_argument),
            Route.CANCEL: ButtonRoute(self.on_cancel, some_id, owns=self.owns_job),
            Route.FORGET: ButtonRoute(self.on_forget, one_of("yes", "no")),
            Route.SETTING: ButtonRoute(self.on_setting, one_of(*MODEL_CHOICES, *MESSAGE_CHOICES)),
            Route.LANGUAGE_MENU: ButtonRoute(self.on_languages, no_argument),
            Route.LANGUAGE: ButtonRoute(self.on_language, lambda code: code in self.t.languages),
        }

    def add_messenger(self, messenger: Messenger) -> None:
        """Answer `messenger.platform`'s events through it; its message lifetime caps the policy text."""
        self.messengers[messenger.platform] = messenger
        self.t.cap_messages(messenger.platform, messenger.message_lifetime)
        self.engine.cap_messages(messenger.platform, messenger.message_lifetime)

    # -- dispatch ----------------------------------------------------------------------------------------
    async def dispatch(self, event: Event, apologise: Apology | None = None) -> bool:
        """Handle one event for an adapter; never raises. True when it was handled without an error.

        An error is logged once (its type and traceback: no personal data) and the user gets a short
        apology: the platform's explanation where it has one (e.g. closed DMs), else `internal_error`.
        It goes to the chat, or to `apologise` where the adapter has a better place (a Discord command's
        ephemeral answer).
        """
        try:
            await self.handle(event)
        except Exception as error:
            code = DEFAULT_LANGUAGE
            with contextlib.suppress(Exception):
                code = await self.language_for(event.chat)
            with self.t.using(code):  # the apology in the user's language
                messenger = self.messengers.get(event.chat.platform)
                text = messenger.explain(error) if messenger is not None else None
                if text is None:
                    log.exception("a %s %s failed", event.chat.platform, type(event).__name__)
                    text = self.t("internal_error")
                with contextlib.suppress(Exception):
                    if apologise is not None:
                        await apologise(text)
                    elif messenger is not None:
                        await messenger.send(event.chat, Reply(text))
            return False
        return True

    async def handle(self, event: Event) -> None:
        """Answer one event in the user's language. Errors propagate (`dispatch` catches them)."""
        user_id = self.engine.pseudonym(event.chat.platform, event.chat.user_id)
        with self.t.using(await self.language_of(event.chat, user_id)):
            await self._handle(event, user_id)

    async def _handle(self, event: Event, user_id: str) -> None:
        chat = event.chat
        if chat.private and not chat.by_chat_user:  # someone else's private chat: change nothing there
            if isinstance(event, ButtonPress):
                await self.messenger(chat).acknowledge(event, self.t.refusal(Refused("not_yours")))
            log.info("a %s %s in another user's chat was refused", chat.platform, type(event).__name__)
            return
        screened = await self.gate.screen(event, user_id)  # flood, /ops, access: on every platform
        if screened.answer:
            await self.answer(event, screened.answer)
        if screened.stop:
            return
        if isinstance(event, Command):
            handler = self._handlers.get(event.name)
            if handler is None:
                await self.say(chat, Reply(self.t("unknown_command")), event)
            elif not chat.private and event.name not in {"start", "help", "privacy"}:
                await self.say(chat, Reply(self.t("group_redirect")), event)
            else:
                await handler(event, user_id)
        elif isinstance(event, ButtonPress):
            await self.press(event, user_id)
        elif isinstance(event, PhotoMessage):
            await self.photos(event, user_id)
        elif isinstance(event, TextMessage) and chat.private:
            await self.say(chat, Reply(self.t("text_hint")))

    # -- language ----------------------------------------------------------------------------------------
    async def language_of(self, chat: Chat, user_id: str) -> str:
        """The user's /language choice, else the language their platform reports, else English.

        The reported language is remembered for a known user, so messages sent without an event (portraits,
        progress) and Discord DMs (which carry no locale) speak it too."""
        preference = await self.engine.language_preference(user_id)
        reported = self.t.resolve(chat.language) if chat.language else None
        if reported and preference.known and reported != preference.reported and chat.by_chat_user:
            await self.engine.report_language(user_id, reported)
        return self.t.resolve(preference.chosen or reported or preference.reported)

    async def language_for(self, chat: Chat) -> str:
        """`language_of` for an adapter's own texts (e.g. Discord's hand-off to the DM)."""
        return await self.language_of(chat, self.engine.pseudonym(chat.platform, chat.user_id))

    async def stored_language(self, user_id: str) -> str:
        """The language for messages sent without an event: the choice, else what the platform reported."""
        preference = await self.engine.language_preference(user_id)
        return self.t.resolve(preference.chosen or preference.reported)

    async def language(self, event: Command, user_id: str) -> None:
        """/language: every language as a button labelled in that language."""
        await self.say(event.chat, Reply(self.t("language_choose"), buttons=self.buttons.languages()), event)

    async def on_languages(self, press: ButtonPress, user_id: str, _: str) -> None:
        """The language row of /settings: the language picker."""
        await self.say(press.chat, Reply(self.t("language_choose"), buttons=self.buttons.languages()))

    async def on_language(self, press: ButtonPress, user_id: str, code: str) -> None:
        """language:<code>: speak that language from now on (kept with the user's row until /forget)."""
        await self.engine.choose_language(user_id, press.chat.platform, code)
        with self.t.using(code):
            await self.say(press.chat, Reply(self.t("language_set")))

    def messenger(self, chat: Chat) -> Messenger:
        return self.messengers[chat.platform]

    async def answer(self, event: Event, text: str) -> None:
        """A short answer to an event: the button's own answer for a press, a message otherwise."""
        if isinstance(event, ButtonPress):
            await self.messenger(event.chat).acknowledge(event, text)
        else:
            await self.say(event.chat, Reply(text), event)

    def telegram_invite_link(self, code: str) -> str | None:
        """The Telegram deep link that starts the bot with an invite code (None without Telegram)."""
        link = getattr(self.messengers.get("telegram"), "invite_link", None)
        return link(code) if link else None

    async def say(self, chat: Chat, reply: Reply, event: Event | None = None) -> list[str]:
        interaction = getattr(event, "interaction", None)
        return await self.messenger(chat).send(chat, reply, interaction=interaction)

    @staticmethod
    def address(chat: Chat) -> dict[str, str]:
        return {"chat_id": chat.chat_id, "user_id": chat.user_id}

    # -- consent -----------------------------------------------------------------------------------------
    def consent_reply(self, chat: Chat, lead: str = "") -> Reply:
        text = self.t.policy_summary(chat.platform)
        return Reply((lead + "\n\n" + text) if lead else text, buttons=self.buttons.consent())

    async def start(self, event: Command, user_id: str) -> None:
        """/start: explain, then ask for consent (or welcome back)."""
        if not event.chat.private:
            await self.say(event.chat, Reply(self.t("group_redirect")), event)
            return
        if await self.engine.has_consent(user_id, self.t.policy_versions):
            await self.say(event.chat, Reply(self.t("welcome_back")), event)
            return
        lead = self.t("consent_renew") if await self.engine.consent(user_id) else ""
        await self.say(event.chat, self.consent_reply(event.chat, lead), event)

    async def help(self, event: Command, user_id: str) -> None:
        await self.say(event.chat, Reply(self.t("help", event.chat.platform)), event)

    async def privacy(self, event: Command, user_id: str) -> None:
        await self.say(event.chat, Reply(self.t.policy_full(event.chat.platform)), event)

    async def on_consent(self, press: ButtonPress, user_id: str, answer: str) -> None:
        """consent:yes-<policy version> / consent:no: the consent names the policy text that was shown."""
        chat = press.chat
        if answer == "no":
            await self.say(chat, Reply(self.t("declined")))
            return
        shown = answer.removeprefix("yes-") if answer != "yes" else self.t.policy_version
        read = next((code for code, version in self.t.policy_versions.items() if version == shown), None)
        if read is None:  # the policy changed since these buttons were shown: show the current text
            await self.say(chat, self.consent_reply(chat, self.t("consent_outdated")))
            return
        await self.engine.give_consent(
            user_id, chat.platform, self.address(chat), shown, self.t[read].attestation, language=read
        )
        if chat.language:  # the user has a row now: remember what the platform reports, for later messages
            await self.engine.report_language(user_id, self.t.resolve(chat.language))
        upload = self.engine.settings.upload
        await self.say(
            chat,
            Reply(
                self.t("consented", chat.platform, min_photos=upload.min_photos, max_photos=upload.max_photos)
            ),
        )

    async def require_consent(self, chat: Chat, user_id: str, event: Event | None = None) -> bool:
        """True if the user consented to the current policy; else explain and show the buttons."""
        if await self.engine.has_consent(user_id, self.t.policy_versions):
            return True
        lead = self.t("consent_renew") if await self.engine.consent(user_id) else self.t("consent_needed")
        await self.say(chat, self.consent_reply(chat, lead), event)
        return False

    # -- photos ------------------------------------------------------------------------------------------
    async def photos(self, event: PhotoMessage, user_id: str) -> None:
        """Photos or an album: never downloaded before consent or outside a private chat."""
        chat = event.chat
        if not chat.private:
            await self.say(chat, Reply(self.t("group_redirect")))
            return
        if not await self.require_consent(chat, user_id):
            return
        try:  # blocked, or no training left: the photos would be of no use, so none is downloaded
            await self.engine.check_upload_allowed(user_id)
        except Refused as refusal:
            await self.say(chat, Reply(self.t.refusal(refusal)))
            return
        await self.engine.touch_user(user_id, chat.platform, self.address(chat))
        lines: list[str] = []
        count = await self.engine.photo_count(user_id)
        for place, photo in enumerate(event.photos, start=1):
            # Each answer names its photo by its place in this message (and its file name, where the
            # user chose one), whatever happened to the ones before it.
            which = {
                "number": f"{place}/{len(event.photos)}",
                "name": f" ({photo.name})" if photo.name else "",
            }
            outcome: Accepted | Rejected | None = self.engine.check_size(photo.size)
            if outcome is None:
                try:
                    data = await photo.download()
                except Exception:
                    log.warning("a photo download failed")
                    lines.append(self.t("photo_download_failed", **which))
                    continue
                result = await self.engine.add_photo(user_id, data)
                del data
                outcome, count = result.outcome, result.count
            if isinstance(outcome, Accepted):
                lines.append(self.t("photo_accepted", count=count, **which))
            else:
                reason, tip = self.t.rejection(outcome)
                lines.append(self.t("photo_rejected", reason=reason, tip=tip, **which).strip())
        await self.say(chat, self.upload_summary(lines, count))

    def upload_summary(self, lines: list[str], count: int) -> Reply:
        upload = self.engine.settings.upload
        lines = [*lines, self.t("photo_count", count=count, min_photos=upload.min_photos)]
        if count < upload.min_photos:
            lines.append(self.t("photo_need_more", count=upload.min_photos - count))
            return Reply("\n".join(lines))
        key = "photo_full" if count >= upload.max_photos else "photo_enough"
        lines.append(self.t(key, max_photos=upload.max_photos))
        return Reply("\n".join(lines), buttons=self.buttons.train())

    # -- training and styles -----------------------------------------------------------------------------
    async def train(self, event: Command | ButtonPress, user_id: str, _: str = "") -> None:
        """/train and the Train button."""
        chat = event.chat
        if not await self.require_consent(chat, user_id, event):
            return
        try:
            job_id = await self.engine.start_training(user_id)
        except Refused as refusal:
            await self.say(chat, Reply(self.t.refusal(refusal)), event)
            return
        position = await self.position_text(user_id, job_id)
        await self.show_progress(chat, user_id, job_id, self.t("train_queued", position=position), event)

    async def styles(self, event: Command, user_id: str) -> None:
        if not await self.require_consent(event.chat, user_id, event):
            return
        if not await self.engine.has_model(user_id) and not await self.engine.active_training(user_id):
            await self.say(event.chat, Reply(self.t.refusal(Refused("no_model"))), event)
            return
        await self.say(event.chat, Reply(self.t("styles"), buttons=self.buttons.styles()), event)

    async def on_styles(self, press: ButtonPress, user_id: str, _: str) -> None:
        """The "Another style" button: the style picker again."""
        await self.say(press.chat, Reply(self.t("styles"), buttons=self.buttons.styles()))

    async def on_style(self, press: ButtonPress, user_id: str, key: str) -> None:
        """style:<preset>: queue portraits in that style."""
        chat = press.chat
        if not await self.require_consent(chat, user_id):
            return
        try:
            job_id = await self.engine.request_portraits(user_id, key)
        except Refused as refusal:
            lost = (
                await self.engine.unanswered_request(user_id) if refusal.reason == "request_pending" else None
            )
            if lost is None or lost[1] not in self.engine.presets:
                await self.say(chat, Reply(self.t.refusal(refusal)))
                return
            job_id, key = lost  # this press was handled before a restart, up to the answer: answer it now
        preset = self.engine.presets[key]
        position = await self.position_text(user_id, job_id)
        text = self.t(
            "clip_queued" if preset.video else "style_queued",
            label=self.t.style_label(key, preset.label),
            count=self.engine.settings.engine.images_per_request,
            position=position,
        )
        await self.show_progress(chat, user_id, job_id, text)

    async def position_text(self, user_id: str, job_id: str) -> str:
        position = await self.engine.job_position(user_id, job_id)
        if position is None:
            return ""
        eta = self.t.eta(position.eta_seconds, position.estimated)
        if position.ahead == 0:
            return self.t("queue_position_now", eta=eta)
        return self.t("queue_position", count=position.ahead, eta=eta)

    async def show_progress(
        self, chat: Chat, user_id: str, job_id: str, text: str, event: Event | None = None
    ) -> None:
        ids = await self.say(chat, Reply(text, buttons=self.buttons.cancel(job_id)), event)
        if ids:
            await self.engine.record_message(user_id, ids[-1], "progress", job_id)

    def progress_text(self, stage: str, fraction: float) -> str:
        return self.t(
            "progress",
            stage=self.t.stage(stage),
            bar=progress_bar(fraction),
            percent=round(fraction * 100),
        )

    # -- buttons -----------------------------------------------------------------------------------------
    async def press(self, press: ButtonPress, user_id: str) -> None:
        """Route a button press by the route table. The data is untrusted: decoded strictly, authorised."""
        chat, messenger = press.chat, self.messenger(press.chat)
        if not chat.private:
            await messenger.acknowledge(press, self.t("group_redirect"))
            return
        pressed = decode(press.data)
        route = self._routes.get(pressed.route) if pressed else None
        if pressed is None or route is None or not route.accepts(pressed.arg):
            await messenger.acknowledge(press)
            await self.say(chat, Reply(self.t("expired_button")))
            return
        if route.owns is not None and not await route.owns(user_id, pressed.arg):
            await messenger.acknowledge(press, self.t.refusal(Refused("not_yours")))
            return
        await messenger.acknowledge(press)
        await route.run(press, user_id, pressed.arg)

    async def owns_job(self, user_id: str, job_id: str) -> bool:
        return await self.engine.job(user_id, job_id) is not None

    async def on_cancel(self, press: ButtonPress, user_id: str, job_id: str) -> None:
        """cancel:<job>: stop one job of the presser's."""
        count = 1 if await self.engine.cancel_job(user_id, job_id) else 0
        await self.say(press.chat, Reply(self.t("cancelled", count=count)))

    async def on_forget(self, press: ButtonPress, user_id: str, answer: str) -> None:
        """forget:yes / forget:no, the confirmation of /forget."""
        if answer == "yes":
            await self.erase(press.chat, user_id)
        else:
            await self.say(press.chat, Reply(self.t("forget_kept")))

    async def on_setting(self, press: ButtonPress, user_id: str, key: str) -> None:
        """set:<choice>: one of /settings' choices."""
        await self.apply_setting(press.chat, user_id, key)

    # -- status, settings, data --------------------------------------------------------------------------
    async def status(self, event: Command, user_id: str) -> None:
        status = await self.engine.status(user_id, event.chat.platform, self.t.policy_versions)
        none = self.t("status_none")

        def stored(count: int, key: str, deadline: float | None) -> str:
            if not count:
                return none
            what = self.t(key, count=count)
            return self.t("status_deleted_at", what=what, when=self.t.when(deadline)) if deadline else what

        jobs = ", ".join(
            self.t(
                "status_job",
                kind=self.t.job_word(job.kind),
                state=self.t.job_word(job.state),
                percent=round(job.progress * 100),
                eta=self.t.eta(pos.eta_seconds, pos.estimated),
            )
            for job, pos in status.jobs
        )
        consent = await self.engine.consent(user_id)
        messages = (
            self.t("messages_deleted_after", duration=self.t.duration(status.message_retention))
            if status.message_retention
            else self.t("messages_kept")
        )
        text = self.t(
            "status",
            consent=self.t("status_consent", when=self.t.when(consent["given_at"])) if consent else none,
            photos=stored(status.photos, "status_photos", status.photo_deadline),
            model=stored(1 if status.has_model else 0, "status_models", status.model_deadline),
            outputs=stored(status.outputs, "status_outputs", status.output_deadline),
            jobs=jobs or none,
            messages=messages,
        )
        text = "\n".join([text, *self.allowance_lines(status.allowances)])
        text += "\n" + self.t("status_ref", ref=status.support_ref)
        # The schedule below states this user's own /settings choices, not the operator's defaults.
        schedule = self.t.schedule(
            event.chat.platform, status.model_retention, status.message_retention or 0.0
        )
        await self.say(event.chat, Reply(text + "\n\n" + schedule), event)

    def allowance_lines(self, allowances: list[Allowance]) -> list[str]:
        """One line per quota: what is left, and when the next unit comes back."""
        return [
            self.t(
                "status_quota",
                what=self.t.lookup("quotas", allowance.kind),
                left=allowance.left,
                limit=allowance.limit,
                renews=self.t("status_quota_renews", when=self.t.when(allowance.renews_at))
                if allowance.renews_at and allowance.left < allowance.limit
                else "",
            )
            for allowance in allowances
        ]

    async def settings(self, event: Command, user_id: str) -> None:
        if not await self.require_consent(event.chat, user_id, event):
            return
        await self.say(
            event.chat,
            self.settings_reply(event.chat, user_id, await self._retentions(event.chat, user_id)),
            event,
        )

    async def _retentions(self, chat: Chat, user_id: str) -> tuple[float, float]:
        return (
            await self.engine.model_retention(user_id),
            await self.engine.message_retention(user_id, chat.platform),
        )

    def settings_reply(self, chat: Chat, user_id: str, current: tuple[float, float]) -> Reply:
        model, messages = current
        cap = self.engine.settings.retention.model
        choices = [key for key, seconds in MODEL_CHOICES.items() if seconds <= cap] + list(MESSAGE_CHOICES)
        text = self.t(
            "settings",
            model=self.t.duration(model),
            model_cap=self.t.duration(cap),
            messages=self.t("messages_deleted_after", duration=self.t.duration(messages))
            if messages
            else self.t("messages_kept"),
        )
        return Reply(text, buttons=self.buttons.settings(choices))

    async def apply_setting(self, chat: Chat, user_id: str, key: str) -> None:
        if key in MODEL_CHOICES:
            await self.engine.set_model_retention(user_id, MODEL_CHOICES[key])
        else:
            await self.engine.set_message_retention(user_id, MESSAGE_CHOICES[key], chat.platform)
        await self.say(chat, Reply(self.t("settings_saved", what=self.t.setting_button(key))))

    async def mydata(self, event: Command, user_id: str) -> None:
        if not await self.engine.is_known(user_id):
            await self.say(event.chat, Reply(self.t("mydata_empty")), event)
            return
        summary, archive = await self.engine.export(user_id)
        if archive is None:  # no photos or portraits: no empty zip
            files = (("likeness-data.json", summary),)
            await self.say(event.chat, Reply(self.t("mydata_caption_no_files"), files=files), event)
            return
        files = (("likeness-data.json", summary), ("likeness-files.zip", archive))
        await self.say(event.chat, Reply(self.t("mydata_caption"), files=files), event)

    async def cancel(self, event: Command, user_id: str) -> None:
        count = await self.engine.cancel_jobs(user_id)
        await self.say(
            event.chat,
            Reply(self.t("cancelled", count=count) if count else self.t("nothing_to_cancel")),
            event,
        )

    async def forget(self, event: Command, user_id: str) -> None:
        await self.say(event.chat, Reply(self.t("forget_confirm"), buttons=self.buttons.forget()), event)

    async def erase(self, chat: Chat, user_id: str) -> None:
        """Delete the bot's messages where the platform allows, then everything in the engine."""
        messenger = self.messenger(chat)
        deleted = 0
        for message_id in await self.engine.messages(user_id):
            try:
                deleted += bool(await messenger.delete(chat, message_id))
            except Exception:
                log.warning("deleting a delivered message failed")
        receipt = await self.engine.forget(user_id)
        counts = {**receipt.counts, "chat messages": deleted}
        delete_saved_files = getattr(messenger, "delete_saved_files", None)
        if delete_saved_files is not None:  # the console: the files it wrote on this computer
            counts["files saved on this computer"] = await delete_saved_files(chat)
        lines = "\n".join(
            self.t("receipt_line", what=self.t.receipt_label(name), count=count)
            for name, count in counts.items()
        )
        await self.say(
            chat,
            Reply(
                self.t(
                    "forget_receipt",
                    receipt_id=receipt.receipt_id,
                    when=self.t.when(receipt.at),
                    counts=lines,
                )
            ),
        )


async def run_progress_updates(
    conversation: Conversation, platform: str, stop: asyncio.Event, interval: float = 3.0
) -> None:
    """Edit each active job's progress message in place, at most once per `interval` per message."""
    engine, shown = conversation.engine, {}  # job id -> text last shown, for running jobs only
    while not stop.is_set():
        try:
            jobs = await engine.running_progress(platform)
            running = {job.job_id for job in jobs}
            for job_id in [job_id for job_id in shown if job_id not in running]:
                del shown[job_id]  # finished: its last edit is done by the delivery
            for job in jobs:
                with conversation.t.using(await conversation.stored_language(job.user_id)):
                    text = conversation.progress_text(job.stage, job.progress)
                    if shown.get(job.job_id) == text:
                        continue
                    address = await engine.chat_of(job.user_id)
                    if address is None:
                        continue
                    chat = Chat(platform, address["chat_id"], address["user_id"], True)
                    await conversation.messengers[platform].edit(
                        chat, job.message_id, Reply(text, buttons=conversation.buttons.cancel(job.job_id))
                    )
                    shown[job.job_id] = text
        except Exception:
            log.exception("progress update failed; trying again")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=interval)
