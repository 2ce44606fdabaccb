"""Starting the product as a newcomer does: `python -m bot --console` and `python -m engine` in real
subprocesses. A normal start prints nothing but the console; a start that cannot work stops with exit code 2
and one complete line that names the setting and the fix."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def run(tmp_path: Path, args: list[str], stdin: str = "", **settings: str) -> subprocess.CompletedProcess:
    """Run `python -m ARGS` in an empty folder with only the given `LIKENESS_*` settings (no .env)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIKENESS_")}
    env.update(
        {
            "PYTHONPATH": str(ROOT),
            "HF_HUB_OFFLINE": "1",
            "LIKENESS_DATA_DIR": str(tmp_path / "var"),
            "LIKENESS_MASTER_KEY": base64.urlsafe_b64encode(os.urandom(32)).decode(),
            "LIKENESS_ENGINE_DEVICE": "cpu",
            **settings,
        }
    )
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=tmp_path,
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_console_on_the_tiny_model_starts_without_noise(tmp_path):
    done = run(tmp_path, ["bot", "--console", "out"], "/help\nquit\n", LIKENESS_ENGINE_MODEL="tiny")
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""  # no torchvision / tokenizer / hub warnings, no traceback
    assert "Likeness console." in done.stdout and "/forget" in done.stdout


@pytest.mark.parametrize(
    ("settings", "start"),
    [
        (
            {"LIKENESS_ENGINE_MODEL": "no-such-org/no-such-model"},
            "likeness: engine: LIKENESS_ENGINE_MODEL=no-such-org/no-such-model is not in the local Hugging "
            "Face cache and HF_HUB_OFFLINE=1 allows no download: fetch it once with "
            "`hf download no-such-org/no-such-model`",
        ),
        (
            {"LIKENESS_ENGINE_MODEL": "./models/sdxl"},
            "likeness: engine: LIKENESS_ENGINE_MODEL=./models/sdxl: no such file or folder (",
        ),
        (
            {"LIKENESS_ENGINE_MODEL": "tiny", "LIKENESS_ENGINE_DEVICE": "cuda"},
            "likeness: engine: LIKENESS_ENGINE_DEVICE=cuda, but ",
        ),
    ],
)
def test_console_that_cannot_load_its_model_stops_with_one_line(tmp_path, settings, start):
    if "LIKENESS_ENGINE_DEVICE" in settings and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    done = run(tmp_path, ["bot", "--console", "out"], **settings)
    assert done.returncode == 2
    [line] = done.stderr.splitlines()
    assert line.startswith(start) and line.endswith(".")


def test_standalone_worker_without_cuda_stops_with_one_line(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    done = run(
        tmp_path,
        ["engine"],
        LIKENESS_ENGINE_DEVICE="cuda",
        LIKENESS_ENGINE_MODEL="tiny",
        LIKENESS_LOG_LEVEL="WARNING",
    )
    assert done.returncode == 2  # it used to log "worker stopped" and exit 0
    [line] = done.stderr.splitlines()
    assert (
        line.startswith("likeness: LIKENESS_ENGINE_DEVICE=cuda, but ") and "LIKENESS_ENGINE_MODEL" not in line
    )
