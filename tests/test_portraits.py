"""Best-of-N, face refinement and the high-resolution pass on the tiny pipelines (real diffusers, CPU)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import dataclasses

import numpy as np
import pytest
import torch

from engine.likeness import Signature, find_faces
from engine.ml.generate import GenerationStopped, Generator, face_crop_box
from engine.ml.pipeline import load_pipeline, loaded_adapters
from engine.ml.portraits import make_portraits
from engine.presets import Preset, preset_size
from tests import faces_data

CPU = torch.device("cpu")
FAST = Preset("fast", "Fast", "portrait photo of {token}", "blurry", 3, 6.0, "3:2")
STRANGER = Signature(embedding=(0.0,) * 128, photos=1)


@pytest.fixture(scope="module")
def gen():
    return Generator(load_pipeline("tiny", CPU, torch.float32))


@pytest.fixture(scope="module")
def small_face():
    """Grace Hopper scaled down so her face is about 60 px, as in a wide shot; dlib still finds it."""
    image = faces_data.grace_hopper().resize((160, 188))
    (face,) = find_faces(image)
    return image, (face.left, face.top, face.right, face.bottom)


def test_refinement_redraws_the_face_region_only_and_keeps_the_size(gen, small_face):
    image, box = small_face
    refined = gen.refine_face(None, FAST, "sks person", image, box, seed=1)
    assert refined.size == image.size and refined.mode == "RGB"
    diff = np.abs(np.asarray(refined, dtype=np.int16) - np.asarray(image, dtype=np.int16)).sum(axis=2)
    left, top, right, bottom = face_crop_box(box, image.width, image.height)
    outside = diff.copy()
    outside[top:bottom, left:right] = 0
    assert outside.max() == 0  # nothing outside the redrawn square changes
    fl, ft, fr, fb = box
    assert diff[ft:fb, fl:fr].mean() > 10  # the face itself is regenerated (random tiny weights)
    assert diff[top, left] <= 3 * 3  # the square's corner is outside the feathered mask
    assert loaded_adapters(gen.pipe) == set()


def test_upscale_doubles_the_size_with_tiled_decoding_and_restores_the_vae(gen):
    image = faces_data.coffee().resize(preset_size(FAST, 64, 8))
    big = gen.upscale(None, FAST, "sks person", image, seed=3)
    assert big.size == (image.width * 2, image.height * 2)
    assert not gen.pipe.vae.use_tiling  # tiling was on for the pass only
    # The tiny VAE tiles from 64 px, so this 2x image went through the tiled decoder.
    assert max(big.size) > gen.pipe.vae.tile_sample_min_size


def test_follow_up_passes_can_be_stopped(gen):
    image = faces_data.coffee().resize((48, 32))
    with pytest.raises(GenerationStopped):
        gen.refine_face(None, FAST, "sks person", image, (16, 8, 32, 24), seed=1, should_stop=lambda: True)
    with pytest.raises(GenerationStopped):
        gen.upscale(None, FAST, "sks person", image, seed=1, should_stop=lambda: True)
    assert not gen.pipe.vae.use_tiling and loaded_adapters(gen.pipe) == set()


def test_best_of_n_always_delivers_the_requested_count_with_the_gate(gen):
    preset = dataclasses.replace(FAST, refine_face=True, upscale=2)
    seen: list[float] = []
    result = make_portraits(
        gen, None, preset, "sks person", count=2, candidates=2, seed=5, signature=STRANGER,
        min_likeness=50, progress=lambda f, _m: seen.append(f),
    )  # fmt: skip
    width, height = preset_size(FAST, 64, 8)
    assert len(result.candidates) == 4 and len(result.images) == len(result.scores) == 2
    assert all(image.size == (width * 2, height * 2) for image in result.images)
    # Random tiny weights draw no faces: nothing reaches the minimum, both are delivered anyway.
    assert all(s.faces == 0 and s.likeness is None for s in result.scores)
    assert result.below_minimum == 2 and result.refined == 0
    assert seen == sorted(seen) and seen[-1] == 1.0
    meta = result.metadata()
    assert meta["delivered"] == [0, 1] and meta["below_minimum"] == 2  # no face: generation order
    assert meta["candidates"] == [{"faces": 0, "distance": None}] * 4


def test_sdxl_layout_refines_and_upscales():
    xl = Generator(load_pipeline("tiny-sdxl", CPU, torch.float32))
    image = faces_data.grace_hopper().resize((96, 112))
    refined = xl.refine_face(None, FAST, "sks person", image, (20, 20, 60, 60), seed=0)
    assert refined.size == image.size
    big = xl.upscale(None, FAST, "sks person", image.crop((0, 0, 64, 48)), seed=0)
    assert big.size == (128, 96)
