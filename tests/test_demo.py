"""The demo photo set: distinct photos of one public-domain face that pass intake together, and a console
that reaches training with them in one step."""

from __future__ import annotations

from pathlib import Path

from bot.demo import VARIANTS, demo_photos, send_line
from engine.intake import Accepted, IntakeLimits, process_photo
from tests.test_startup import run


def test_every_demo_photo_passes_intake_after_the_ones_before():
    photos = demo_photos()
    assert len(photos) == len(VARIANTS) >= 6  # the default LIKENESS_UPLOAD_MIN_PHOTOS
    accepted = []
    for name, data in photos:
        result = process_photo(data, IntakeLimits(), [a.fingerprint for a in accepted])
        assert isinstance(result, Accepted), (name, result)
        accepted.append(result)
    assert len({a.fingerprint.phash for a in accepted}) == len(photos)  # distinct, not copies


def test_console_demo_reaches_training_in_one_step(tmp_path):
    paths = [Path("out", "demo-photos", name) for name, _ in demo_photos()]
    line = send_line(paths)
    done = run(
        tmp_path,
        ["bot", "--console", "out", "--demo"],
        f"/start\n1\n{line}\n/train\nquit\n",
        LIKENESS_ENGINE_MODEL="tiny",
    )
    assert done.returncode == 0, done.stderr
    assert line in done.stdout  # the demo says exactly what to type
    assert all((tmp_path / path).is_file() for path in paths)
    assert f"{len(paths)} of at least 6 photos so far" in done.stdout
    assert "Training queued" in done.stdout
