"""The outbox loop: sends finished work (model ready, portraits, clips, failures) and records every send.

A delivery is sent in parts, one platform call each (the images as one album, then the "another style"
button); each accepted part is recorded at once with its message ids (for /forget and the messages
deadline), so a restart resumes after the last acknowledged part and never repeats it. Only a kill in the
milliseconds between the platform's answer and that record can repeat one part. Delivered portraits are
deleted from the server at once (retention: outputs).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import replace

from bot.events import Chat, Reply
from bot.flow import Conversation
from engine.facade import Delivery

log = logging.getLogger(__name__)


def delivery_replies(conversation: Conversation, delivery: Delivery) -> list[Reply]:
    t, engine = conversation.t, conversation.engine
    if delivery.kind == "trained":
        return [Reply(t("trained"), buttons=conversation.buttons.styles())]
    if delivery.kind == "failed":
        return [Reply(t("job_failed", reason=delivery.error or t("unknown_error")))]
    preset = engine.presets.get(delivery.preset or "")
    label = t.style_label(delivery.preset or "", preset.label) if preset else t("portrait")
    caption = "\n".join([t("results_caption", label=label), *likeness_lines(conversation, delivery)])
    names = tuple(f"likeness-{delivery.preset}-{n + 1}.png" for n in range(len(delivery.images)))
    images = tuple(data for _, data in delivery.images)
    if delivery.kind == "video":  # one clip, one message: the caption and the buttons ride with it
        clip = delivery.images[0][1]
        name = f"likeness-{delivery.preset}.mp4"
        buttons = conversation.buttons.another_style()
        return [Reply(caption, buttons=buttons, protect=True, animation=(name, clip))]
    mode = engine.settings.provenance.deliver_as
    # protect=True marks portraits; whether and how they are protected is the platform adapter's setting
    portraits = Reply(caption, images=images, image_names=names, protect=True)
    replies = []
    if mode in {"photos", "both"}:
        replies.append(portraits)
    if mode in {"files", "both"}:
        replies.append(replace(portraits, as_files=True))
    # The button is its own part: a lost button message never makes the portraits resend.
    replies.append(Reply("⬆️", buttons=conversation.buttons.another_style()))
    return replies


def likeness_lines(conversation: Conversation, delivery: Delivery) -> list[str]:
    """Under the album: each portrait's likeness ("1: Likeness 87%", or that no face was found), and the
    gate's note when some are under the operator's minimum. Nothing for portraits that were not scored."""
    t = conversation.t
    labels = []
    for n, score in enumerate(delivery.scores, start=1):
        if score.likeness is not None:
            labels.append(f"{n}: {t('likeness', percent=score.likeness)}")
        elif score.faces == 0:
            labels.append(f"{n}: {t('likeness_no_face')}")
    lines = [" · ".join(labels)] if labels else []
    below = sum(1 for score in delivery.scores if score.below_minimum)
    if below:
        count = len(delivery.scores)
        minimum = conversation.engine.settings.engine.min_likeness
        lines.append(t("likeness_note", reaching=count - below, count=count, minimum=minimum))
    return lines


async def deliver_pending(conversation: Conversation, platform: str) -> int:
    """Send every pending delivery for `platform` once; returns how many were sent.

    A delivery that cannot be sent (the user blocked the bot, the platform is down) stays in the outbox
    for the next round and does not hold up the ones behind it.
    """
    sent = 0
    for delivery in await conversation.engine.pending_deliveries(platform):
        try:
            await deliver(conversation, platform, delivery)
        except Exception as error:
            log.warning("a delivery failed (%s); it stays in the outbox", type(error).__name__)
            await conversation.engine.delivery_failed(delivery)
            continue
        sent += 1
    return sent


async def deliver(conversation: Conversation, platform: str, delivery: Delivery) -> None:
    """Send one delivery in the user's language and record it."""
    with conversation.t.using(await conversation.stored_language(delivery.user_id)):
        await _deliver(conversation, platform, delivery)


async def _deliver(conversation: Conversation, platform: str, delivery: Delivery) -> None:
    engine = conversation.engine
    messenger = conversation.messengers[platform]
    chat = Chat(platform, delivery.chat["chat_id"], delivery.chat["user_id"], True)
    progress_id = await engine.progress_message(delivery.job_id)
    if progress_id and not delivery.parts_sent:
        done = conversation.progress_text("done", 1.0) if delivery.kind != "failed" else "—"
        try:
            await messenger.edit(chat, progress_id, Reply(done))
        except Exception:
            log.warning("the progress message could not be edited")
    if delivery.kind in ("portraits", "video") and not delivery.images:  # expired before it could be sent
        await engine.delivered(delivery, [], platform)
        return
    for part, reply in enumerate(delivery_replies(conversation, delivery)):
        if part < delivery.parts_sent:
            continue  # the platform accepted it before a restart: never sent twice
        message_ids = await messenger.send(chat, reply)
        await engine.part_sent(delivery, part, message_ids, platform)  # at once, before the next send
    await engine.delivered(delivery, [], platform)


async def run_deliveries(
    conversation: Conversation, platform: str, stop: asyncio.Event, interval: float = 1.0
) -> None:
    while not stop.is_set():
        try:
            await deliver_pending(conversation, platform)
        except Exception:
            log.exception("delivery failed; it stays in the outbox and is tried again")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=interval)
