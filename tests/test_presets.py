"""Presets: the shipped file is valid, every field is checked, sizes follow the aspect and the model."""

from pathlib import Path

import pytest

from engine.presets import Preset, PresetError, load_presets, preset_size

SHIPPED = Path(__file__).resolve().parents[1] / "config" / "presets.toml"
GOOD = """
[presets.headshot]
label = "Headshot"
prompt = "photo of {token}"
negative_prompt = "blurry"
steps = 30
guidance = 6.5
aspect = "4:5"
"""


def test_shipped_presets_are_valid_and_cover_the_styles():
    presets = load_presets(SHIPPED)
    assert len(presets) >= 8
    for key in (
        "headshot",
        "dating",
        "outdoor",
        "studio-bw",
        "cinematic",
        "oil-painting",
        "anime",
        "fantasy",
    ):
        assert key in presets
    for preset in presets.values():
        assert "sks person" in preset.render("sks person")
        assert "{token}" not in preset.render("sks person")


def test_good_file_loads(tmp_path):
    path = tmp_path / "p.toml"
    path.write_text(GOOD)
    preset = load_presets(path)["headshot"]
    assert preset == Preset("headshot", "Headshot", "photo of {token}", "blurry", 30, 6.5, "4:5")
    assert not preset.refine_face and preset.upscale == 1  # optional fields, off by default
    path.write_text(GOOD + "refine_face = true\nupscale = 2\n")
    preset = load_presets(path)["headshot"]
    assert preset.refine_face and preset.upscale == 2


def test_wide_presets_refine_faces():
    presets = load_presets(SHIPPED)
    assert all(presets[key].refine_face for key in ("outdoor", "cinematic", "fantasy"))
    assert not presets["headshot"].refine_face and presets["studio-bw"].upscale == 2


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (('prompt = "photo of {token}"', 'prompt = "photo"'), "prompt"),
        (("steps = 30", "steps = 0"), "steps"),
        (("steps = 30", 'steps = "30"'), "steps"),
        (("guidance = 6.5", "guidance = 99"), "guidance"),
        (('aspect = "4:5"', 'aspect = "wide"'), "aspect"),
        (('aspect = "4:5"', 'aspect = "9:1"'), "aspect"),
        (('label = "Headshot"\n', ""), "label"),
        (("steps = 30", "steps = 30\nseed = 1"), "seed"),
        (("steps = 30", "steps = 30\nupscale = 3"), "upscale"),
        (("steps = 30", "steps = 30\nupscale = true"), "upscale"),
        (("steps = 30", 'steps = 30\nrefine_face = "yes"'), "refine_face"),
    ],
)
def test_each_bad_field_is_named(tmp_path, change, field):
    path = tmp_path / "p.toml"
    path.write_text(GOOD.replace(*change))
    with pytest.raises(PresetError) as err:
        load_presets(path)
    message = str(err.value)
    assert "'headshot'" in message and f"'{field}'" in message and "\n" not in message


def test_broken_toml_and_empty_file(tmp_path):
    path = tmp_path / "p.toml"
    path.write_text("[presets.x\n")
    with pytest.raises(PresetError):
        load_presets(path)
    path.write_text("title = 'nothing'\n")
    with pytest.raises(PresetError, match="no \\[presets"):
        load_presets(path)


@pytest.mark.parametrize(
    ("aspect", "native", "multiple", "expected"),
    [
        ("1:1", 512, 64, (512, 512)),
        ("1:1", 1024, 32, (1024, 1024)),
        ("4:5", 512, 64, (448, 576)),
        ("3:2", 1024, 32, (1248, 832)),
        ("4:5", 64, 4, (56, 72)),
    ],
)
def test_preset_size_keeps_aspect_and_area(aspect, native, multiple, expected):
    preset = Preset("k", "K", "{token}", "", 20, 7.0, aspect)
    width, height = preset_size(preset, native, multiple)
    assert (width, height) == expected
    assert width % multiple == 0 and height % multiple == 0
    assert 0.85 < width * height / native**2 < 1.15
