"""Fuzz campaign: random hostile updates against the real bot over the fake Telegram server.

    python bench/fuzz.py                   # 10,000 inputs
    python bench/fuzz.py --inputs 500 --seed 7

The bot (`bot.app.App`, Telegram front-end, no worker) long-polls tests/fake_faults.py. Users send random
texts (4096 characters, RTL marks, zero-width joiners, emoji), commands with random arguments, hostile
files (tests/hostile_files.py) as photo and as document, huge captions, documents declaring a size over
the limit, random / over-long / replayed / forged callback data; and updates that must be ignored: channel
posts, messages without a sender, edited messages, chat-member updates, inline-mode presses, unparseable
polls. The log goes through the same filter as in production (engine.runtime.setup_logging).

Counted (all must be 0):
- crashes: the bot stopped, or stopped answering (a canary /help after every 500 inputs);
- silent drops: an input that must be answered (private chat, with a sender) got no answer within
  GIVE_UP seconds: no message to that chat and, for a press, no answer to that very callback query;
- tracebacks: log records at ERROR or above, or carrying an exception;
- plaintext: a personal field of a fuzz update (name, username, id) in the log, or image bytes in a file
  of the data dir.
Also reported: answers later than LATE seconds (slow, not lost) and the answer latency p50/p99/max, with
the load average, since the bot shares the CPU with whatever else runs. Each user waits for the answer to
one input before sending the next, as a person would; answers are counted incrementally (per chat, per
callback id), so the bookkeeping stays O(1) per check however long the campaign runs.
The LAST line is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import logging
import os
import random
import statistics
import sys
import tempfile
import time
import traceback
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bot.app import App  # noqa: E402
from engine import logs  # noqa: E402
from tests.fake_faults import FaultyTelegram  # noqa: E402
from tests.fake_telegram import FakeUser  # noqa: E402
from tests.hostile_files import corpus  # noqa: E402
from tests.tiny_settings import tiny_settings  # noqa: E402

LATE = 20.0  # an answer later than this is reported as late
GIVE_UP = 120.0  # no answer after this: a silent drop
USERS = 40
WEIRD = "\u202e\u202d\u200b\u200d\u2066\ufeff👩‍👩‍👧‍👦🏳️‍🌈ﷺ\u0301\u0000\ud7ff"
COMMANDS = ["start", "help", "privacy", "status", "train", "styles", "cancel", "settings", "export", "forget"]


def weird_text(rng: random.Random, length: int) -> str:
    alphabet = WEIRD + "abcxyz /@_<>&\"'\\\n\tйцуאבגعربي漢字"
    return "".join(rng.choice(alphabet) for _ in range(length))


class Campaign:
    def __init__(self, fake: FaultyTelegram, rng: random.Random):
        self.fake, self.rng = fake, rng
        self.files = [(name, data) for name, data, _ in corpus() if len(data) < 5 * 1024 * 1024]
        self.silent_drops = 0
        self.answered = 0
        self.late = 0
        self.latencies: list[float] = []
        self._calls_seen = 0
        self._to_chat: Counter[int] = Counter()  # bot API calls per chat, counted incrementally
        self._callbacks_seen = 0
        self._answered_queries: set[str] = set()
        self.ignored_kinds = 0
        self.secrets: list[str] = []

    def secret_user(self, number: int) -> FakeUser:
        name = f"Fz{self.rng.randrange(10**8):08d}"
        username = f"fzu{self.rng.randrange(10**8):08d}"
        user = self.fake.user(7_000_000 + number, first_name=name, username=username)
        self.secrets += [name, username, str(user.id)]
        return user

    def sent_to(self, chat_id: int) -> int:
        """Bot API calls made so far in `chat_id` (incremental over the fake's call log)."""
        calls = self.fake.calls
        for name, params in calls[self._calls_seen :]:
            if (chat := _to_chat(name, params)) is not None:
                self._to_chat[chat] += 1
        self._calls_seen = len(calls)
        return self._to_chat[chat_id]

    def query_answered(self, query_id: str | None) -> bool:
        answered = self.fake.answered_callbacks
        for params in answered[self._callbacks_seen :]:
            self._answered_queries.add(str(params.get("callback_query_id")))
        self._callbacks_seen = len(answered)
        return query_id is not None and query_id in self._answered_queries

    async def answered_by(self, user: FakeUser, before: int, query_id: str | None) -> float | None:
        """Seconds until the bot answered in the user's chat (or answered `query_id`); None: never."""
        started = time.monotonic()
        try:
            await self.fake.wait_for(
                lambda f: self.sent_to(user.id) > before or self.query_answered(query_id), timeout=GIVE_UP
            )
        except TimeoutError:
            return None
        return time.monotonic() - started

    async def one(self, user: FakeUser) -> None:
        """One random input from `user`; answered inputs are checked for an answer."""
        rng = self.rng
        kind = rng.choices(
            ["text", "command", "photo", "document", "caption", "oversize", "press", "ignored"],
            weights=[20, 20, 6, 6, 4, 2, 22, 20],
        )[0]
        before = self.sent_to(user.id)
        query_id: str | None = None
        if kind == "text":
            await user.send_text(weird_text(rng, rng.choice([1, 50, 4096])).lstrip("/") or "x")
        elif kind == "command":
            name = rng.choice([*COMMANDS, "x" * 40, "ßtart", "start@other_bot"])
            await user.send_text(f"/{name} {weird_text(rng, rng.randrange(0, 300))}".rstrip())
        elif kind in {"photo", "document", "caption"}:
            _, data = rng.choice(self.files)
            if kind == "document":
                file_name = rng.choice(
                    ["me.jpg", "x.png", "a" * 200 + ".heic", "../../etc/passwd", "‮gpj.exe"]
                )
                await user.send_document(data, file_name, rng.choice(["image/jpeg", "application/pdf", ""]))
            else:
                caption = weird_text(rng, 1024) if kind == "caption" else None
                try:
                    await user.send_photo(data, caption=caption)
                except Exception:
                    await user.send_document(
                        data, "photo.jpg", "image/jpeg"
                    )  # the fake could not thumbnail it
        elif kind == "oversize":
            await self.oversized_document(user)
        elif kind == "press":
            query_id = await self.press(user)
        else:
            self.ignored_kinds += 1
            await self.ignored(user)
            return
        seconds = await self.answered_by(user, before, query_id)
        if seconds is None:
            self.silent_drops += 1
            return
        self.answered += 1
        self.latencies.append(seconds)
        self.late += seconds > LATE

    async def press(self, user: FakeUser) -> str:
        """A press on a real button (maybe replayed) or a forged one; returns the callback query id."""
        rng = self.rng
        live = [m for m in self.fake.messages(user.id) if m.buttons]
        choice = rng.random()
        if live and choice < 0.4:  # a real button, maybe pressed twice (replayed)
            message = rng.choice(live)
            button = rng.choice(message.buttons)
            return await user.press(message, button.get("callback_data") or button["text"])
        data = rng.choice(
            [
                weird_text(rng, rng.randrange(1, 64)),
                "x" * rng.randrange(65, 300),
                f"cancel:{rng.randrange(10**12):x}",
                f"style:{weird_text(rng, 10)}",
                "consent:yes",
                "",
            ]
        )
        message_id = rng.choice([m.message_id for m in self.fake.messages(user.id)] or [1])
        return await user.forge_callback(data, message_id)

    async def oversized_document(self, user: FakeUser) -> None:
        stored = self.fake.add_file(b"\xff\xd8\xff" + b"\x00" * 100, "documents", "jpg")
        await self.fake.push_raw_update(
            {
                "message": {
                    "message_id": 10**6 + self.rng.randrange(10**6),
                    "date": int(time.time()),
                    "chat": user.chat_json,
                    "from": user.json,
                    "document": {
                        "file_id": stored.file_id,
                        "file_unique_id": stored.file_unique_id,
                        "file_name": "big.jpg",
                        "mime_type": "image/jpeg",
                        "file_size": 2**31,
                    },
                }
            }
        )

    async def ignored(self, user: FakeUser) -> None:
        now = int(time.time())
        rng = self.rng
        channel = {"id": -100_000_000 - rng.randrange(1000), "type": "channel", "title": weird_text(rng, 20)}
        updates = [
            {"channel_post": {"message_id": 1, "date": now, "chat": channel, "text": "/start"}},
            {"message": {"message_id": 2, "date": now, "chat": user.chat_json, "text": "no sender"}},
            {
                "edited_message": {
                    "message_id": 3,
                    "date": now,
                    "edit_date": now,
                    "chat": user.chat_json,
                    "from": user.json,
                    "text": weird_text(rng, 30),
                }
            },
            {
                "my_chat_member": {
                    "chat": user.chat_json,
                    "from": user.json,
                    "date": now,
                    "old_chat_member": {"status": "member", "user": self.fake.bot_user},
                    "new_chat_member": {"status": "kicked", "user": self.fake.bot_user, "until_date": 0},
                }
            },
            {
                "callback_query": {
                    "id": str(rng.randrange(10**9)),
                    "from": user.json,
                    "chat_instance": "c",
                    "inline_message_id": "AAAA",
                    "data": "consent:yes",
                }
            },
            {
                "message": {
                    "message_id": 4,
                    "date": now,
                    "chat": user.chat_json,
                    "from": user.json,
                    "poll": {"id": "1", "question": "q", "options": [{"text": "a"}], "total_voter_count": 0,
                             "is_closed": False, "is_anonymous": True, "type": "regular",
                             "allows_multiple_answers": False},
                }
            },
        ]  # fmt: skip
        await self.fake.push_raw_update(rng.choice(updates))


def _to_chat(method: str, params: dict[str, Any]) -> int | None:
    if method == "getUpdates":
        return None
    try:
        return int(params.get("chat_id"))
    except (TypeError, ValueError):
        return None


def _where(record: logging.LogRecord) -> str:
    """The project's frames of a record's exception, innermost last (file:line, no values)."""
    if not record.exc_info or record.exc_info[2] is None:
        return ""
    frames = [
        f"{Path(frame.filename).relative_to(ROOT)}:{frame.lineno}"
        for frame in traceback.extract_tb(record.exc_info[2])
        if frame.filename.startswith(str(ROOT)) and "/.venv/" not in frame.filename
    ]
    return " at " + " > ".join(frames) if frames else ""


def plaintext_files(data_dir: Path) -> int:
    found = 0
    for path in data_dir.rglob("*"):
        if path.is_file() and path.name != "master.key":
            head = path.read_bytes()[:8]
            found += head[:3] == b"\xff\xd8\xff" or head == b"\x89PNG\r\n\x1a\n"
    return found


async def campaign(inputs: int, seed: int, work: Path) -> dict[str, int | float]:
    rng = random.Random(seed)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    logs.install([handler])
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if not record.name.startswith("aiohttp."):  # the fake server's own log, not the bot's
                records.append(record)

    keep = Keep(level=logging.ERROR)
    root.addHandler(keep)
    fake = FaultyTelegram()
    await fake.start()
    settings = tiny_settings(
        work, LIKENESS_TELEGRAM_TOKEN=fake.token, LIKENESS_TELEGRAM_API_URL=fake.base_url
    )
    app = await App.create(settings, with_worker=False)
    await app.start()
    run = Campaign(fake, rng)
    crashes = 0
    started = time.monotonic()
    load = [os.getloadavg()[0]]
    try:
        users = [run.secret_user(n) for n in range(USERS)]
        for user in users[: USERS // 2]:  # half the users have agreed, so their photos reach the intake
            await user.send_text("/start")
            consent = await fake.wait_for_message(user.id, "Do you agree?")
            await user.press(consent, "consent:yes")
            await fake.wait_for_message(user.id, "Thank you!")
        done = 0
        while done < inputs:
            batch = min(500, inputs - done)
            per_user = [batch // USERS + (1 if n < batch % USERS else 0) for n in range(USERS)]

            async def lane(user: FakeUser, count: int) -> None:
                for _ in range(count):
                    await run.one(user)

            await asyncio.gather(*(lane(u, c) for u, c in zip(users, per_user, strict=True)))
            done += batch
            canary = fake.user(9_000_000 + done)
            await canary.send_text("/help")
            try:
                await fake.wait_for_message(canary.id, "/", timeout=GIVE_UP)
            except TimeoutError:
                crashes += 1
                texts = [m.text for m in fake.messages(canary.id)]
                print(
                    f"canary unanswered: {texts!r:.200}, pending updates {fake.pending_updates()}", flush=True
                )
            if app.stop_event.is_set():
                crashes += 1
                break
            load.append(os.getloadavg()[0])
            print(
                f"{done} inputs, {run.silent_drops} silent drops, {run.late} late, {len(records)} error records, "
                f"{time.monotonic() - started:.0f} s, load {load[-1]:.1f}",
                flush=True,
            )
    finally:
        await app.stop()
        await fake.stop()
        root.removeHandler(handler)
        root.removeHandler(keep)
    text = stream.getvalue()
    for kind in sorted(
        {f"{r.name}: {r.msg} [{(r.exc_text or '-').splitlines()[-1]}]{_where(r)}" for r in records}
    ):
        print("error record:", kind, flush=True)  # templates, exception types and code lines only
    tracebacks = len(records) + text.count("Traceback")
    leaked = sum(1 for secret in set(run.secrets) if secret in text)
    latencies = sorted(run.latencies) or [0.0]
    return {
        "inputs": inputs,
        "answered": run.answered,
        "ignored_kind_inputs": run.ignored_kinds,
        "crashes": crashes,
        "silent_drops": run.silent_drops,
        "late_answers": run.late,
        "answer_p50_s": round(statistics.median(latencies), 2),
        "answer_p99_s": round(latencies[int(0.99 * (len(latencies) - 1))], 2),
        "answer_max_s": round(latencies[-1], 2),
        "tracebacks": tracebacks,
        "plaintext": leaked + plaintext_files(work),
        "getUpdates_calls": len(fake.calls_to("getUpdates")),
        "seconds": round(time.monotonic() - started, 1),
        "load_average": round(statistics.mean(load), 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--inputs", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=13)
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="likeness-fuzz-"))
    result = asyncio.run(campaign(args.inputs, args.seed, work / "data"))
    print(json.dumps(result))
    return 1 if any(result[k] for k in ("crashes", "silent_drops", "tracebacks", "plaintext")) else 0


if __name__ == "__main__":
    sys.exit(main())
