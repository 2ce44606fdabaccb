"""How long a job should take before this server has measured any: a prior from the model family, the
training steps, the number of images and the device, all read from the settings (no torch import).

The rates are the figures measured in the README's benchmark table (2-core CPU for tiny, one H100/H200 for
SD1.5/SDXL shapes); real models on a CPU are guessed from the GPU figures, so an answer built on a prior is
always called an estimate. Once a job of a kind has finished, its measured durations replace the prior, per
kind: a clip's ETA comes from past clips, never from still portraits.
"""

from __future__ import annotations

from engine.settings import EngineSettings

DEFAULT_TRAIN_STEPS = 500  # engine.ml.train.TrainConfig's default (the diffusers DreamBooth-LoRA recipe)
GENERATION_STEPS = 30  # sampling steps of the shipped presets
# An animated clip of the shipped video presets: 16 frames (+4 blended for the seamless loop) at 25 steps,
# each frame costing about 0.7 of a still image's step (bench/video.py), plus decoding and H.264 encoding.
CLIP_FRAMES, CLIP_STEPS, FRAME_COST, CLIP_EXTRA_SETUP = 20, 25, 0.7, 2.0

# (family, device kind) -> (training steps per second, sampling steps per second for one image)
_RATES = {
    ("tiny", "cpu"): (10.9, 31.0),
    ("tiny", "gpu"): (30.0, 100.0),
    ("sd15", "gpu"): (3.21, 56.7),
    ("sd15", "cpu"): (0.03, 0.5),
    ("sdxl", "gpu"): (1.73, 18.9),
    ("sdxl", "cpu"): (0.005, 0.1),
}
_SETUP_SECONDS = {"tiny": 2.0, "sd15": 10.0, "sdxl": 15.0}  # photo encoding, adapter load, saving


def model_family(model: str) -> str:
    """`tiny`, `sdxl` or `sd15`, guessed from the model setting (ids and file names say "xl" for SDXL)."""
    name = model.lower()
    if name.startswith("tiny"):
        return "tiny"
    return "sdxl" if "xl" in name else "sd15"


def device_kind(settings: EngineSettings) -> str:
    """`cpu` or `gpu`. `auto` is taken as a GPU for real models (they need one) and a CPU for tiny."""
    device = settings.device.lower()
    if device == "auto":
        return "cpu" if model_family(settings.model) == "tiny" else "gpu"
    return "cpu" if device == "cpu" else "gpu"


def prior_seconds(kind: str, settings: EngineSettings) -> float:
    """The expected duration of a `train`, `generate` or `video` job on this configuration."""
    family = model_family(settings.model)
    train_rate, sample_rate = _RATES[family, device_kind(settings)]
    if kind == "train":
        steps = settings.train_steps or DEFAULT_TRAIN_STEPS
        return _SETUP_SECONDS[family] + steps / train_rate
    if kind == "video":
        work = CLIP_FRAMES * FRAME_COST * CLIP_STEPS / sample_rate
        return _SETUP_SECONDS[family] + CLIP_EXTRA_SETUP + work
    return _SETUP_SECONDS[family] + settings.images_per_request * GENERATION_STEPS / sample_rate
