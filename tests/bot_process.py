"""The real bot as a child process, for crash tests and the crash sweep: `python -m bot` (or
`python -m engine worker`) on the tiny model against the fake Telegram server, killable with SIGKILL and
restartable on the same data dir. Used by bench/crash_sweep.py and tests/test_crash_delivery_video.py."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.certs import make_test_chain
from tests.fake_telegram import FakeTelegram

ROOT = Path(__file__).resolve().parents[1]


class Process:
    """One `python -m bot` or `python -m engine worker` child, restartable."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path):
        self.args, self.env, self.log = args, env, log
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        handle = open(self.log, "ab")  # noqa: SIM115 - the child owns it
        self.proc = subprocess.Popen(
            [sys.executable, *self.args], env=self.env, cwd=ROOT, stdout=handle, stderr=handle
        )

    def kill(self) -> None:
        """SIGKILL: nothing in flight is finished, only the files on disk remain."""
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()


def bot_environment(
    fake: FakeTelegram, data_dir: Path, certs: Path, embedded: bool, sweep_seconds: float = 5.0
) -> dict[str, str]:
    """The environment of a child on the tiny model (C2PA signing on, short lease and sweep interval)."""
    certs.mkdir(parents=True, exist_ok=True)
    chain = make_test_chain(certs)
    return {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "HF_HUB_OFFLINE": "1",
        "LIKENESS_DATA_DIR": str(data_dir),
        "LIKENESS_ENGINE_MODEL": "tiny",
        "LIKENESS_ENGINE_DEVICE": "cpu",
        "LIKENESS_ENGINE_TRAIN_STEPS": "5",
        "LIKENESS_ENGINE_IMAGES_PER_REQUEST": "2",
        "LIKENESS_ENGINE_POLL_INTERVAL": "0.2",
        "LIKENESS_ENGINE_LEASE": "6s",
        "LIKENESS_ENGINE_EMBEDDED_WORKER": "true" if embedded else "false",
        "LIKENESS_UPLOAD_MIN_PHOTOS": "3",
        "LIKENESS_RETENTION_SWEEP_INTERVAL": f"{sweep_seconds:.0f}s",
        "LIKENESS_TELEGRAM_TOKEN": fake.token,
        "LIKENESS_TELEGRAM_API_URL": fake.base_url,
        "LIKENESS_PROVENANCE_C2PA_CERT": str(chain.cert),
        "LIKENESS_PROVENANCE_C2PA_KEY": str(chain.key),
        "LIKENESS_LOG_LEVEL": "WARNING",
    }


def read_db(data_dir: Path, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Rows of a query against the child's SQLite database, opened read-only beside the running child."""
    db = sqlite3.connect(f"file:{data_dir / 'likeness.sqlite3'}?mode=ro", uri=True, timeout=10)
    try:
        return db.execute(sql, params).fetchall()
    finally:
        db.close()
