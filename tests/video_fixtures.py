"""Shared setup of the animated-clip tests: a still preset and a video preset small enough for the tiny
model with the tiny motion adapter on a busy 2-core CPU, and the settings that turn clips on.

Used by tests/test_video_jobs.py, test_video_telegram.py, test_video_discord.py and
test_crash_delivery_video.py (which passes `VIDEO_ENV` to a real `python -m bot` process).
"""

from __future__ import annotations

from pathlib import Path

from engine.settings import Settings
from tests.tiny_settings import tiny_settings

SLOW = 300.0  # seconds allowed for model work (training, a clip) on a busy 2-core CPU
CLIP_FRAMES = 8
CLIP_LABEL = "Clip (animated)"


def presets_text(clip_aspect: str = "1:1") -> str:
    """`fast` (still portraits) and `clip` (an 8-frame looping clip at 8 fps), 2 denoising steps each."""
    return f"""
[presets.fast]
label = "Fast"
prompt = "portrait photo of {{token}}"
negative_prompt = "blurry"
steps = 2
guidance = 6.0
aspect = "1:1"

[presets.clip]
label = "{CLIP_LABEL}"
prompt = "portrait photo of {{token}}, smiling"
negative_prompt = "blurry"
steps = 2
guidance = 6.0
aspect = "{clip_aspect}"
video = true
frames = {CLIP_FRAMES}
fps = 8
loop = true
"""


def write_presets(directory: Path, clip_aspect: str = "1:1") -> Path:
    """The presets file in `directory`; returns its path."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "presets.toml"
    path.write_text(presets_text(clip_aspect), encoding="utf-8")
    return path


def video_env(presets: Path) -> dict[str, str]:
    """The `LIKENESS_*` settings that offer clips: these presets and the tiny motion adapter."""
    return {"LIKENESS_ENGINE_PRESETS": str(presets), "LIKENESS_ENGINE_MOTION_ADAPTER": "tiny"}


def video_settings(data_dir: Path, presets: Path, **env: str) -> Settings:
    """The tiny-model settings with clips on, plus any `LIKENESS_*` overrides given."""
    return tiny_settings(data_dir, **{**video_env(presets), **env})
