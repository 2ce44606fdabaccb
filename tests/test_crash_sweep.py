"""A short crash sweep in CI: the real `python -m bot` (embedded worker, tiny model) against the fake
Telegram server, SIGKILLed once at a random moment of the whole flow and restarted on the same data dir.
`bench/crash_sweep.py` runs the long version (50 rounds, bot and standalone worker)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(1800)
def test_a_killed_and_restarted_bot_loses_and_repeats_nothing(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "crash_sweep.py"), "--rounds", "2", "--target", "bot",
         "--work", str(tmp_path)],
        capture_output=True, text=True, env=env, timeout=1750,
    )  # fmt: skip
    totals = json.loads(done.stdout.strip().splitlines()[-1])
    assert totals["rounds"] == 2 and totals["kills"] <= 1
    for key in ("lost", "duplicates", "silent_drops", "stuck", "missed_deadlines", "plaintext"):
        assert totals[key] == 0, (key, done.stdout[-3000:])
