"""`python -m engine eval` end to end on the tiny model, with a real person's photos from packages."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine.evaluate import main, summarise
from tests import faces_data
from tests.tiny_settings import TINY_ENV

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def photos(tmp_path) -> Path:
    folder = tmp_path / "photos"
    folder.mkdir()
    for n, data in enumerate(faces_data.same_person_photos()):
        (folder / f"me-{n}.jpg").write_bytes(data)
    (folder / "z-coffee.jpg").write_bytes(faces_data.encode(faces_data.coffee()))  # refused: no face
    return folder


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIKENESS_")}
    return {
        **env,
        **TINY_ENV,
        "LIKENESS_DATA_DIR": str(tmp_path / "data"),
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": str(ROOT),
        **extra,
    }


def test_eval_runs_end_to_end_on_the_tiny_model(photos, tmp_path):
    before = sorted(p.name for p in photos.iterdir())
    options = ["--holdout", "1", "--presets", "headshot,outdoor", "--runs", "1", "--steps", "2"]
    proc = subprocess.run(
        [sys.executable, "-m", "engine", "eval", str(photos), *options],
        cwd=tmp_path,
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    result = json.loads(lines[-1])
    assert "photos: 3 accepted, rejected: 1 no_face" in lines
    for key in ("likeness_mean", "likeness_p10", "face_rate", "baseline_likeness_mean", "per_preset"):
        assert key in result
    assert set(result["per_preset"]) == {"headshot", "outdoor"}
    assert result["photos"] == 3 and result["holdout"] == 1
    assert result["portraits"] == 2 * 2  # images_per_request (2 in tiny settings) per preset and run
    # The tiny model's random weights draw no faces: the code path is real, the numbers are empty.
    assert result["face_rate"] == 0.0 and result["likeness_mean"] is None and result["gain"] is None
    assert any(line.startswith("headshot: likeness n/a") for line in lines)
    # Nothing written: not in the photo folder, not in the data dir, not in the working directory.
    assert sorted(p.name for p in photos.iterdir()) == before
    assert not (tmp_path / "data").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photos"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["{missing}"], "is not a folder"),
        (["{photos}", "--holdout", "3"], "3 photos passed the intake; at least 4 are needed"),
        (["{photos}", "--presets", "headshot,nope"], "unknown preset 'nope'"),
        (["{photos}", "--runs", "0"], "--runs at least 1"),
    ],
)
def test_eval_refuses_bad_input_with_one_clear_line(args, message, photos, tmp_path, monkeypatch, capsys):
    for key, value in _env(tmp_path).items():
        monkeypatch.setenv(key, value)
    argv = [a.format(missing=tmp_path / "missing", photos=photos) for a in args]
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert message in err and len(err.strip().splitlines()) == 1
    assert json.loads(out.strip().splitlines()[-1]) == {"error": err.strip().removeprefix("likeness eval: ")}


def test_summary_of_likeness_values():
    assert summarise([90, None, 70, 80]) == {"likeness_mean": 80.0, "likeness_p10": 72.0, "face_rate": 0.75}
    assert summarise([None, None]) == {"likeness_mean": None, "likeness_p10": None, "face_rate": 0.0}
