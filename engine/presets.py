"""Style presets: a prompt template, a negative prompt and a few sampler knobs, loaded from TOML."""

from __future__ import annotations

import math
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

_KEY = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
_ASPECT = re.compile(r"^(\d{1,2}):(\d{1,2})$")
_MAX_RATIO = 3.0
UPSCALES = (1, 2)


class PresetError(Exception):
    """A preset file is malformed; the message names the preset and the field."""


@dataclass(frozen=True)
class Preset:
    """One style. ``prompt`` contains ``{token}``, replaced by the user's trained identifier."""

    key: str
    label: str
    prompt: str
    negative_prompt: str
    steps: int
    guidance: float
    aspect: str
    refine_face: bool = False  # regenerate the face region at the model's resolution (small faces)
    upscale: int = 1  # 2: a second image-to-image pass at twice the size
    video: bool = False  # an animated clip (MP4) instead of still portraits
    frames: int = 16  # video only: frames in the delivered clip
    fps: int = 8  # video only: playback frame rate
    loop: bool = False  # video only: the last frame flows into the first (crossfade)

    def render(self, token: str) -> str:
        """The prompt with the user's token filled in (plain replace, so other braces are left alone)."""
        return self.prompt.replace("{token}", token)


def _field(key: str, table: dict, name: str, kind: type | tuple[type, ...]):
    if name not in table:
        raise PresetError(f"preset {key!r}: missing field {name!r}")
    value = table[name]
    if isinstance(value, bool) or not isinstance(value, kind):
        raise PresetError(f"preset {key!r}: field {name!r} has the wrong type ({type(value).__name__})")
    return value


def _optional(key: str, table: dict, name: str, kind: type, default: object):
    if name not in table:
        return default
    value = table[name]
    if (kind is not bool and isinstance(value, bool)) or not isinstance(value, kind):
        raise PresetError(f"preset {key!r}: field {name!r} has the wrong type ({type(value).__name__})")
    return value


def parse_aspect(aspect: str) -> tuple[int, int]:
    """``"4:5"`` -> ``(4, 5)``; raises ``ValueError`` for anything else or for extreme ratios."""
    match = _ASPECT.match(aspect)
    if not match:
        raise ValueError("aspect must look like '4:5'")
    w, h = int(match[1]), int(match[2])
    if w == 0 or h == 0 or max(w / h, h / w) > _MAX_RATIO:
        raise ValueError(f"aspect must be non-zero and at most {_MAX_RATIO:g}:1")
    return w, h


def _preset(key: str, table: object) -> Preset:
    if not _KEY.match(key):
        raise PresetError(f"preset {key!r}: key must be 1-32 lowercase letters, digits, '-' or '_'")
    if not isinstance(table, dict):
        raise PresetError(f"preset {key!r}: must be a table ([presets.{key}])")
    known = {"label", "prompt", "negative_prompt", "steps", "guidance", "aspect", "refine_face", "upscale"}
    known |= _VIDEO_FIELDS
    unknown = sorted(set(table) - known)
    if unknown:
        raise PresetError(f"preset {key!r}: unknown field {unknown[0]!r}")

    label = _field(key, table, "label", str).strip()
    prompt = _field(key, table, "prompt", str).strip()
    negative = _field(key, table, "negative_prompt", str).strip()
    steps = _field(key, table, "steps", int)
    guidance = float(_field(key, table, "guidance", (int, float)))
    aspect = _field(key, table, "aspect", str).strip()
    refine_face = _optional(key, table, "refine_face", bool, False)
    upscale = _optional(key, table, "upscale", int, 1)

    if not label or len(label) > 64:
        raise PresetError(f"preset {key!r}: field 'label' must be 1-64 characters")
    if prompt.count("{token}") != 1:
        raise PresetError(f"preset {key!r}: field 'prompt' must contain '{{token}}' exactly once")
    if not 1 <= steps <= 150:
        raise PresetError(f"preset {key!r}: field 'steps' must be between 1 and 150")
    if not 1.0 <= guidance <= 30.0:
        raise PresetError(f"preset {key!r}: field 'guidance' must be between 1 and 30")
    try:
        parse_aspect(aspect)
    except ValueError as e:
        raise PresetError(f"preset {key!r}: field 'aspect' {e}") from None
    if upscale not in UPSCALES:
        raise PresetError(f"preset {key!r}: field 'upscale' must be 1 (off) or 2")
    return Preset(
        key,
        label,
        prompt,
        negative,
        steps,
        guidance,
        aspect,
        refine_face,
        upscale,
        **_video_fields(key, table),
    )


_VIDEO_FIELDS = {"video", "frames", "fps", "loop"}
MAX_FRAMES = 24  # AnimateDiff adapters are trained on 16 frames and hold at most 32 (with the loop overlap)


def _flag(key: str, table: dict, name: str) -> bool:
    value = table.get(name, False)
    if not isinstance(value, bool):
        raise PresetError(f"preset {key!r}: field {name!r} must be true or false")
    return value


def _video_fields(key: str, table: dict) -> dict:
    """The optional video fields; ``frames``, ``fps`` and ``loop`` only make sense with ``video = true``."""
    video = _flag(key, table, "video")
    extra = sorted(_VIDEO_FIELDS - {"video"} & set(table))
    if extra and not video:
        raise PresetError(f"preset {key!r}: field {extra[0]!r} needs 'video = true'")
    if not video:
        return {}
    frames = _field(key, table, "frames", int) if "frames" in table else 16
    fps = _field(key, table, "fps", int) if "fps" in table else 8
    loop = _flag(key, table, "loop")
    if not 8 <= frames <= MAX_FRAMES:
        raise PresetError(f"preset {key!r}: field 'frames' must be between 8 and {MAX_FRAMES}")
    if not 4 <= fps <= 30:
        raise PresetError(f"preset {key!r}: field 'fps' must be between 4 and 30")
    return {"video": True, "frames": frames, "fps": fps, "loop": loop}


def load_presets(path: Path) -> dict[str, Preset]:
    """Read and validate every preset in ``path`` (a TOML file with ``[presets.<key>]`` tables)."""
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise PresetError(f"preset file {Path(path).name}: {e}") from None
    tables = data.get("presets")
    if not isinstance(tables, dict) or not tables:
        raise PresetError(f"preset file {Path(path).name}: no [presets.<key>] tables")
    return {key: _preset(key, table) for key, table in tables.items()}


def preset_size(preset: Preset, native: int, multiple: int) -> tuple[int, int]:
    """``(width, height)``: the preset's aspect, about ``native**2`` pixels, sides a multiple of ``multiple``.

    Keeping the pixel count at the model's native resolution is how SD1.5 (512) and SDXL (1024) were
    trained, so the same preset looks right on both.
    """
    w, h = parse_aspect(preset.aspect)
    area = native * native
    width = math.sqrt(area * w / h)
    height = width * h / w

    def snap(x: float) -> int:
        return max(multiple, round(x / multiple) * multiple)

    return snap(width), snap(height)
