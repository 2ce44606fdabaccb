"""Crash sweep: SIGKILL the bot (or a standalone worker) at a random moment of the whole flow, restart it on
the same data dir, and count what went wrong.

    python bench/crash_sweep.py                       # 50 rounds, half killing the bot, half the worker
    python bench/crash_sweep.py --rounds 4 --target bot

Each round is one new user doing /start → consent → album → train → style → portraits against the fake
Telegram server (real HTTP, real `python -m bot` / `python -m engine worker` processes, tiny model on CPU).
A killer task sends SIGKILL at a time drawn uniformly from [0, T] (T: the median length of this target's
rounds without a kill so far; the first round of each target is one)
and restarts the process. The user behaves like a person: an action that gets no answer within a while is
counted as a *silent drop* and done again.

Counted, all on the same data dir:
- lost: a round whose portraits never arrive;
- duplicates: a request's images (or "model ready") delivered more than once;
- silent drops: a user action never answered (the bot lost it in a crash without telling the user);
- stuck: jobs still queued/running, deliveries still pending after the sweep has settled;
- missed deadlines: retention deadlines overdue by more than a sweep interval + 60 s;
- plaintext: a file in the data dir holding image magic bytes or a slice of an uploaded photo.

Prints one line per round; the LAST line is one JSON object with the totals.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests import faces_data as fd  # noqa: E402
from tests.bot_process import Process, bot_environment, read_db  # noqa: E402
from tests.fake_telegram import FakeTelegram, FakeUser, SentMessage  # noqa: E402

ANSWER_WAIT = (
    150.0  # seconds a user waits for an answer (a restart on a busy CPU included) before trying again
)
MODEL_WAIT = 600.0  # training or generation on a busy 2-core CPU, including restarts
SWEEP = 5.0  # retention sweep interval in the sweep's settings (seconds)


@dataclass
class Totals:
    rounds: int = 0
    kills: int = 0
    lost: int = 0
    duplicates: int = 0
    silent_drops: int = 0
    stuck: int = 0
    missed_deadlines: int = 0
    plaintext: int = 0
    seconds: list[float] = field(default_factory=list)


class Driver:
    """One user, behaving like a person: waits for each answer, tries again when none comes."""

    def __init__(self, fake: FakeTelegram, user: FakeUser, totals: Totals):
        self.fake, self.user, self.totals = fake, user, totals

    async def until(self, contains: str, after: int, act, wait: float = ANSWER_WAIT) -> SentMessage:
        """Do `act()` and wait for a bot message containing `contains`; redo it on silence."""
        while True:
            await act()
            try:
                return await self.fake.wait_for_message(self.user.id, contains, timeout=wait, after=after)
            except TimeoutError:
                self.totals.silent_drops += 1

    def last_id(self) -> int:
        messages = self.fake.messages(self.user.id)
        return messages[-1].message_id if messages else 0

    async def run(self) -> bool:
        user, photos = self.user, fd.same_person_photos()
        start = await self.until("Do you agree?", self.last_id(), lambda: user.send_text("/start"))
        await self.until("Thank you!", start.message_id, lambda: user.press(start, "consent:yes"))
        summary = await self.until("photos so far", self.last_id(), lambda: user.send_album(photos))
        while "Training queued" not in (summary.text or "") and "already being trained" not in (
            summary.text or ""
        ):
            summary = await self.until(
                "raining", summary.message_id, lambda s=summary: user.press(s, "train")
            )
        try:
            trained = await self.fake.wait_for_message(user.id, "model is ready", timeout=MODEL_WAIT)
        except TimeoutError:
            return False
        style = next(b["callback_data"] for b in trained.buttons if b["callback_data"].startswith("style:"))
        await self.until("portraits coming up", trained.message_id, lambda: user.press(trained, style))
        try:
            await self.fake.wait_for(lambda f: len(self.portraits()) >= 2, timeout=MODEL_WAIT)
        except TimeoutError:
            return False
        await asyncio.sleep(2.0)  # a duplicate would arrive now
        return True

    def portraits(self) -> list[SentMessage]:
        return [m for m in self.fake.messages(self.user.id) if m.document is not None or m.photo is not None]

    def duplicates(self) -> int:
        extra_images = max(0, len(self.portraits()) - 2) // 2
        ready = [m for m in self.fake.messages(self.user.id) if "model is ready" in (m.text or "")]
        return extra_images + max(0, len(ready) - 1)


async def killer(proc: Process, at: float, totals: Totals, ready_wait: float = 0.0) -> None:
    await asyncio.sleep(at)
    proc.kill()
    totals.kills += 1
    proc.start()


def settle_counts(data_dir: Path, photos: tuple[bytes, ...]) -> dict[str, int]:
    """Stuck jobs, pending deliveries, overdue deadlines, and plaintext files, read from the data dir."""
    [(stuck,)] = read_db(data_dir, "SELECT count(*) FROM jobs WHERE state IN ('queued','running')")
    [(pending,)] = read_db(data_dir, "SELECT count(*) FROM deliveries WHERE state='pending'")
    stuck += pending
    [(overdue,)] = read_db(
        data_dir, "SELECT count(*) FROM deadlines WHERE due_at < ?", (time.time() - SWEEP - 60,)
    )
    return {"stuck": stuck, "missed_deadlines": overdue, "plaintext": plaintext_files(data_dir, photos)}


def plaintext_files(data_dir: Path, photos: tuple[bytes, ...]) -> int:
    slices = [photo[len(photo) // 2 : len(photo) // 2 + 64] for photo in photos]
    found = 0
    for path in data_dir.rglob("*"):
        if not path.is_file() or path.name == "master.key":
            continue
        data = path.read_bytes()
        if data[:3] == b"\xff\xd8\xff" or data[:8] == b"\x89PNG\r\n\x1a\n" or any(s in data for s in slices):
            found += 1
    return found


async def sweep(rounds: int, targets: list[str], seed: int, work: Path) -> Totals:
    rng = random.Random(seed)
    totals = Totals()
    # One fake Telegram per deployment: two bots polling one token would take each other's updates
    # (real Telegram answers the second poller 409 Conflict).
    fakes = {target: FakeTelegram() for target in sorted(set(targets))}
    for fake in fakes.values():
        await fake.start()
    data_dir, certs = work / "data", work / "certs"
    data_dir.mkdir(parents=True, exist_ok=True)
    certs.mkdir(exist_ok=True)
    processes: dict[str, Process] = {}
    try:
        for target, fake in fakes.items():
            embedded = target == "bot"
            env = bot_environment(fake, data_dir / target, certs, embedded, SWEEP)
            (data_dir / target).mkdir(exist_ok=True)
            processes[f"{target}:bot"] = Process(["-m", "bot"], env, work / f"{target}-bot.log")
            if not embedded:
                processes[f"{target}:worker"] = Process(
                    ["-m", "engine", "worker"], env, work / f"{target}-worker.log"
                )
        unkilled_seconds: dict[str, list[float]] = {target: [] for target in fakes}
        for number in range(rounds):
            target = targets[number % len(targets)]
            fake = fakes[target]
            for key, proc in processes.items():
                if key.startswith(target + ":") and proc.proc is None:
                    proc.start()
            victim = processes[f"{target}:{'bot' if target == 'bot' else 'worker'}"]
            user = fake.user(10_000 + number)
            driver = Driver(fake, user, totals)
            calm = unkilled_seconds[target]
            at = rng.uniform(0, statistics.median(calm)) if calm else None
            kill = asyncio.create_task(killer(victim, at, totals)) if at is not None else None
            started = time.monotonic()
            ok = await driver.run()
            elapsed = time.monotonic() - started
            landed = kill is not None and kill.done()
            if not landed:
                calm.append(elapsed)  # no kill landed: a sample of the undisturbed flow's length
            if kill is not None:
                kill.cancel()  # a kill drawn after the flow ended is not counted
            totals.rounds += 1
            totals.lost += 0 if ok else 1
            totals.duplicates += driver.duplicates()
            totals.seconds.append(round(elapsed, 1))
            print(
                f"round {number + 1}/{rounds} target={target} "
                f"kill_at={'-' if at is None else f'{at:.1f}s' + ('' if landed else '(after the end)')} "
                f"ok={ok} duplicates={driver.duplicates()} silent_drops={totals.silent_drops} "
                f"portraits={len(driver.portraits())} messages={len(fake.messages(user.id))} "
                f"{elapsed:.1f}s",
                flush=True,
            )
        await asyncio.sleep(SWEEP + 2)  # let the last deliveries and deadlines settle
        for target in fakes:
            counts = settle_counts(data_dir / target, fd.same_person_photos())
            totals.stuck += counts["stuck"]
            totals.missed_deadlines += counts["missed_deadlines"]
            totals.plaintext += counts["plaintext"]
    finally:
        for proc in processes.values():
            proc.stop()
        for fake in fakes.values():
            await fake.stop()
    return totals


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--target", choices=["bot", "worker", "both"], default="both")
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--work", type=Path, default=None, help="keep data dirs and logs here")
    args = parser.parse_args(argv)
    targets = ["bot", "worker"] if args.target == "both" else [args.target]
    work = args.work or Path(tempfile.mkdtemp(prefix="likeness-crash-"))
    totals = asyncio.run(sweep(args.rounds, targets, args.seed, work))
    result = asdict(totals)
    result["seconds_median"] = sorted(totals.seconds)[len(totals.seconds) // 2] if totals.seconds else 0
    del result["seconds"]
    print(json.dumps(result))
    bad = totals.lost + totals.duplicates + totals.silent_drops + totals.stuck + totals.plaintext
    return 1 if bad or totals.missed_deadlines else 0


if __name__ == "__main__":
    sys.exit(main())
