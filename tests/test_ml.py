"""The ML core on a tiny pipeline built offline: real diffusers + peft, real photos, CPU."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import builtins
import contextlib
import dataclasses
import json
import logging
import tempfile
from pathlib import Path

import diffusers
import numpy as np
import PIL.Image
import pytest
import torch
import transformers
from matplotlib import cbook
from skimage import data

from engine.ml.device import DeviceError, pick_device
from engine.ml.generate import GenerationStopped, Generator, new_slot_name
from engine.ml.pipeline import ModelLoadError, load_pipeline, loaded_adapters, native_resolution
from engine.ml.tiny import build_tiny_pipeline
from engine.ml.train import (
    TRAIN_ADAPTER,
    TrainConfig,
    TrainingStopped,
    pack_adapter,
    train_lora,
    unpack_adapter,
)
from engine.presets import Preset, load_presets, preset_size

diffusers.utils.logging.set_verbosity_error()  # the byte tokenizer truncates long prompts; keep logs quiet
transformers.utils.logging.set_verbosity_error()

CPU = torch.device("cpu")
PRESETS = load_presets(Path(__file__).resolve().parents[1] / "config" / "presets.toml")
FAST = Preset("fast", "Fast", "portrait photo of {token}", "blurry", 4, 6.0, "1:1")
PROMPT = "a photo of sks person"
# High learning rate and low resolution so 50 steps on a 2-core CPU visibly move the loss.
CONFIG = TrainConfig(steps=50, rank=4, alpha=8, learning_rate=3e-2, resolution=32, seed=0)


def _pixels(images: list[PIL.Image.Image]) -> np.ndarray:
    return np.stack([np.asarray(im, dtype=np.int16) for im in images])


@contextlib.contextmanager
def no_files_written(tmp_path: Path):
    """Run in an empty cwd with a private temp dir; fail if any file is opened for writing or appears."""
    cwd = Path(tmp_path, "cwd")
    tmp = Path(tmp_path, "tmp")
    cwd.mkdir()
    tmp.mkdir()
    writes: list[str] = []
    real_open = builtins.open

    def spy_open(file, mode="r", *args, **kwargs):
        if any(flag in mode for flag in "wax+"):
            writes.append(str(file))
        return real_open(file, mode, *args, **kwargs)

    old_cwd, old_tempdir = os.getcwd(), tempfile.tempdir
    os.chdir(cwd)
    tempfile.tempdir = str(tmp)
    builtins.open = spy_open
    try:
        yield
    finally:
        builtins.open = real_open
        tempfile.tempdir = old_tempdir
        os.chdir(old_cwd)
    assert writes == []
    assert list(cwd.iterdir()) == [] and list(tmp.iterdir()) == []


@pytest.fixture(scope="module")
def photos() -> list[PIL.Image.Image]:
    """Two real face photos: the astronaut (Eileen Collins) and Grace Hopper."""
    with cbook.get_sample_data("grace_hopper.jpg") as f:
        hopper = PIL.Image.open(f).convert("RGB")
    return [PIL.Image.fromarray(data.astronaut()), hopper]


@pytest.fixture(scope="module")
def pipe():
    return load_pipeline("tiny", CPU, torch.float32)


@pytest.fixture(scope="module")
def trained(pipe, photos, tmp_path_factory):
    """One real training run (and a generation) on the module's pipeline, proving no file is written."""
    base_before = _pixels(Generator(pipe).generate(None, FAST, "sks person", 1, seed=7))
    steps_seen: list[float] = []
    with no_files_written(tmp_path_factory.mktemp("nofiles")):
        result = train_lora(pipe, photos, PROMPT, CONFIG, progress=lambda f, _msg: steps_seen.append(f))
        generator = Generator(pipe)
        generator.load_adapter("alice", result.adapter)
        generator.generate("alice", FAST, "sks person", 1, seed=7)
        generator.forget("alice")
    return {"result": result, "base_before": base_before, "progress": steps_seen}


@pytest.fixture
def gen(pipe):
    generator = Generator(pipe, cache_size=4)
    yield generator
    for owner in list(generator._loaded):
        generator.forget(owner)
    assert loaded_adapters(pipe) == set()


def _variant(adapter: bytes, seed: int, alpha: float | None = None) -> bytes:
    """Another user's adapter: the same layout with different weights (and optionally another alpha)."""
    state, meta, info = unpack_adapter(adapter)
    g = torch.Generator().manual_seed(seed)
    state = {k: torch.randn(v.shape, generator=g) * v.float().std() for k, v in state.items()}
    meta = dict(meta)
    if alpha is not None:
        meta["unet.lora_alpha"] = alpha
    prefixes = {k.partition(".")[0] for k in state}
    configs = {prefix: _config_from(meta, prefix) for prefix in prefixes}
    return pack_adapter(state, configs, info)


def _config_from(meta: dict, prefix: str):
    from peft import LoraConfig

    return LoraConfig(
        **{k.removeprefix(prefix + "."): v for k, v in meta.items() if k.startswith(prefix + ".")}
    )


def test_pick_device_cpu_and_overrides():
    device, dtype = pick_device("cpu")
    assert device.type == "cpu" and dtype == torch.float32
    assert pick_device("cpu", "bf16") == (torch.device("cpu"), torch.bfloat16)
    if not torch.cuda.is_available():
        assert pick_device() == (CPU, torch.float32)
    with pytest.raises(DeviceError):
        pick_device("cpu", "int3")


def test_tiny_pipeline_is_deterministic_and_offline(pipe):
    a, b = build_tiny_pipeline(seed=3), build_tiny_pipeline(seed=3)
    assert all(torch.equal(x, y) for x, y in zip(a.unet.parameters(), b.unet.parameters(), strict=True))
    assert len(a.tokenizer) == 514
    assert native_resolution(pipe) == 64


def test_training_loss_falls_and_adapter_carries_its_config(trained):
    result = trained["result"]
    assert result.steps == len(result.losses) == CONFIG.steps
    assert np.mean(result.losses[-10:]) < np.mean(result.losses[:10])
    assert trained["progress"][-1] == 1.0
    state, meta, info = unpack_adapter(result.adapter)
    assert state and all(k.startswith("unet.") and "lora" in k for k in state)
    assert meta["unet.r"] == 4 and meta["unet.lora_alpha"] == 8
    assert set(meta["unet.target_modules"]) == {"to_q", "to_k", "to_v", "to_out.0"}
    assert info["rank"] == 4 and info["config"]["learning_rate"] == CONFIG.learning_rate


def test_training_leaves_the_pipeline_as_it_was(pipe, trained, gen):
    assert loaded_adapters(pipe) == set()
    assert not any(p.requires_grad for p in pipe.unet.parameters())
    assert not pipe.unet.training and pipe.unet.dtype == torch.float32
    after = _pixels(gen.generate(None, FAST, "sks person", 1, seed=7))
    assert np.array_equal(after, trained["base_before"])


def test_adapter_changes_the_output_for_two_presets(pipe, trained, gen):
    gen.load_adapter("alice", trained["result"].adapter)
    for key in ("headshot", "cinematic"):
        preset = dataclasses.replace(PRESETS[key], steps=4)
        base = gen.generate(None, preset, "sks person", 2, seed=1)
        styled = gen.generate("alice", preset, "sks person", 2, seed=1)
        assert len(styled) == 2
        assert styled[0].size == preset_size(preset, 64, 8)
        assert np.abs(_pixels(styled) - _pixels(base)).mean() > 1.0
        assert not np.array_equal(_pixels(styled)[0], _pixels(styled)[1])  # seed + i per image


def test_adapters_never_mix(pipe, trained, gen):
    adapter_a = trained["result"].adapter
    gen.load_adapter("alice", adapter_a)
    alone = _pixels(gen.generate("alice", FAST, "sks person", 1, seed=3))
    gen.load_adapter("bob", _variant(adapter_a, seed=1))
    with_b = _pixels(gen.generate("alice", FAST, "sks person", 1, seed=3))
    bob = _pixels(gen.generate("bob", FAST, "sks person", 1, seed=3))
    assert np.array_equal(alone, with_b)
    assert not np.array_equal(alone, bob)


def _params_named(pipe, slot: str) -> list[torch.Tensor]:
    return [p for n, p in pipe.unet.named_parameters() if f".{slot}." in n]


def test_lru_eviction_and_forget_remove_adapters_from_the_pipe(pipe, trained):
    gen = Generator(pipe, cache_size=2)
    adapter = trained["result"].adapter
    gen.load_adapter("a", adapter)
    gen.load_adapter("b", _variant(adapter, seed=2))
    slot_a, slot_b = gen._loaded["a"], gen._loaded["b"]
    gen.generate("a", FAST, "sks person", 1, seed=0)  # "a" is now the most recent
    c_adapter = _variant(adapter, seed=3)
    gen.load_adapter("c", c_adapter)
    assert not gen.has_adapter("b") and gen.has_adapter("a") and gen.has_adapter("c")
    assert gen.owners() == ["a", "c"]
    # "c" reuses evicted "b"'s slot: its tensors are now exactly c's, nothing of b's is left.
    assert gen._loaded["c"] == slot_b and loaded_adapters(pipe) == {slot_a, slot_b}
    c_state, _, _ = unpack_adapter(c_adapter)
    params = dict(pipe.unet.named_parameters())
    for key, value in c_state.items():
        target = key.removeprefix("unet.").replace(".lora_A.", f".lora_A.{slot_b}.")
        target = target.replace(".lora_B.", f".lora_B.{slot_b}.")
        assert torch.equal(params[target], value.float())
    kept = _params_named(pipe, slot_a)
    gen.forget("a")
    assert all(not p.any() for p in kept)  # forgotten weights are zeroed, not just unlinked
    gen.forget("c")
    assert loaded_adapters(pipe) == set() and gen.owners() == []
    with pytest.raises(KeyError):
        gen.generate("a", FAST, "sks person", 1, seed=0)


def test_a_reused_slot_gives_the_same_pixels_as_a_fresh_load(pipe, trained):
    adapter = trained["result"].adapter
    bob = _variant(adapter, seed=4, alpha=2)
    fresh = Generator(pipe, cache_size=1)
    fresh.load_adapter("bob", bob)
    expected = _pixels(fresh.generate("bob", FAST, "sks person", 1, seed=9))
    fresh.forget("bob")
    gen = Generator(pipe, cache_size=1)
    gen.load_adapter("alice", adapter)
    slot = gen._loaded["alice"]
    gen.load_adapter("bob", bob)  # evicts alice, refills her slot with bob's weights and alpha
    assert gen._loaded["bob"] == slot and gen.owners() == ["bob"]
    scalings = {m.scaling[slot] for m in pipe.unet.modules() if slot in getattr(m, "scaling", {})}
    assert scalings == {2 / 4}  # bob's lora_alpha / r, not alice's 8 / 4
    assert np.array_equal(_pixels(gen.generate("bob", FAST, "sks person", 1, seed=9)), expected)
    gen.forget("bob")
    assert loaded_adapters(pipe) == set()


def test_slot_names_are_safe():
    names = {new_slot_name() for _ in range(3)}
    assert len(names) == 3
    assert all("." not in n and n != TRAIN_ADAPTER for n in names)


def test_lora_alpha_survives_the_round_trip(pipe, trained, gen):
    adapter = trained["result"].adapter
    gen.load_adapter("alpha8", adapter)
    name = gen._loaded["alpha8"]
    scalings = {
        layer.scaling[name]
        for layer in pipe.unet.modules()
        if hasattr(layer, "scaling") and name in layer.scaling
    }
    assert scalings == {8 / 4}
    with_alpha = _pixels(gen.generate("alpha8", FAST, "sks person", 1, seed=5))
    # The same weights with alpha dropped to the rank (what loading without metadata would do).
    state, meta, info = unpack_adapter(adapter)
    dropped = pack_adapter(state, {"unet": _config_from({**meta, "unet.lora_alpha": 4}, "unet")}, info)
    gen.load_adapter("alpha4", dropped)
    without = _pixels(gen.generate("alpha4", FAST, "sks person", 1, seed=5))
    assert not np.array_equal(with_alpha, without)


def test_should_stop_raises_and_leaves_no_adapter(pipe, photos, trained):
    calls = iter([False, False, True])
    with pytest.raises(TrainingStopped):
        train_lora(pipe, photos, PROMPT, CONFIG, should_stop=lambda: next(calls))
    assert loaded_adapters(pipe) == set()
    assert not any(p.requires_grad for p in pipe.unet.parameters())


def test_generation_can_be_stopped(pipe, gen):
    with pytest.raises(GenerationStopped):
        gen.generate(None, FAST, "sks person", 1, seed=0, should_stop=lambda: True)


def test_text_encoder_lora_trains_and_loads(pipe, photos, trained, gen):
    config = dataclasses.replace(CONFIG, steps=3, train_text_encoder=True)
    result = train_lora(pipe, photos, PROMPT, config)
    state, meta, _ = unpack_adapter(result.adapter)
    assert any(k.startswith("text_encoder.") for k in state) and meta["text_encoder.r"] == 4
    assert loaded_adapters(pipe) == set()
    gen.load_adapter("carol", result.adapter)
    base = _pixels(gen.generate(None, FAST, "sks person", 1, seed=0))
    assert not np.array_equal(base, _pixels(gen.generate("carol", FAST, "sks person", 1, seed=0)))
    # A second text-encoder adapter refills carol's slot (both parts) and gives what a fresh load gives.
    dan = _variant(result.adapter, seed=5)
    gen.load_adapter("dan", dan)
    fresh = _pixels(gen.generate("dan", FAST, "sks person", 1, seed=0))
    gen.forget("dan")
    single = Generator(pipe, cache_size=1)
    single.load_adapter("carol", result.adapter)
    slot = single._loaded["carol"]
    single.load_adapter("dan", dan)
    assert single._loaded["dan"] == slot
    assert np.array_equal(_pixels(single.generate("dan", FAST, "sks person", 1, seed=0)), fresh)
    single.forget("dan")


def test_sdxl_layout_trains_and_generates(photos):
    xl = load_pipeline("tiny-sdxl", CPU, torch.float32)
    result = train_lora(xl, photos, PROMPT, dataclasses.replace(CONFIG, steps=3))
    gen = Generator(xl)
    gen.load_adapter("dave", result.adapter)
    base = _pixels(gen.generate(None, FAST, "sks person", 1, seed=0))
    styled = _pixels(gen.generate("dave", FAST, "sks person", 1, seed=0))
    assert base.shape == styled.shape and not np.array_equal(base, styled)


def test_local_diffusers_folder_loads(tmp_path):
    build_tiny_pipeline(seed=5).save_pretrained(tmp_path / "model")
    loaded = load_pipeline(str(tmp_path / "model"), CPU, torch.float32)
    assert native_resolution(loaded) == 64
    reference = build_tiny_pipeline(seed=5)
    assert torch.equal(next(loaded.unet.parameters()), next(reference.unet.parameters()))


def _load_error(model: str) -> str:
    with pytest.raises(ModelLoadError) as err:
        load_pipeline(model, CPU, torch.float32)
    message = str(err.value)
    assert "\n" not in message and "..." not in message and message.endswith(".")  # one complete line
    assert f"LIKENESS_ENGINE_MODEL={model}" in message
    return message


def test_hub_model_missing_from_the_cache_offline_says_how_to_download(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    message = _load_error("no-such-org/no-such-model")
    assert "not in the local Hugging Face cache" in message and "HF_HUB_OFFLINE=1" in message
    assert "`hf download no-such-org/no-such-model`" in message
    assert "LIKENESS_ENGINE_MODEL=tiny" in message


@pytest.mark.parametrize("model", ["./no/such/model", "/nonexistent/model.safetensors", "~/no-such.ckpt"])
def test_missing_local_model_path_names_the_folder_it_looked_in(model):
    message = _load_error(model)
    assert "no such file or folder" in message and "relative to the folder" in message
    assert str(Path(model).expanduser().absolute()) in message


def test_folder_that_is_not_a_pipeline(tmp_path):
    (tmp_path / "unet").mkdir()
    message = _load_error(str(tmp_path))
    assert "without model_index.json" in message and "tiny" not in message


def test_file_that_is_not_a_checkpoint(tmp_path):
    weights = tmp_path / "model.bin"
    weights.write_bytes(b"\0" * 64)
    message = _load_error(str(weights))
    assert "not a checkpoint" in message and ".safetensors" in message


def test_corrupt_checkpoint_is_reported_in_whole_sentences(tmp_path):
    broken = tmp_path / "model.safetensors"
    broken.write_bytes(b"this is not a safetensors file at all")
    message = _load_error(str(broken))
    assert "cannot be loaded:" in message and "tiny" not in message


def test_cuda_without_cuda_is_a_device_problem():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(DeviceError) as err:
        pick_device("cuda")
    message = str(err.value)
    assert message.startswith("LIKENESS_ENGINE_DEVICE=cuda, but ") and message.endswith(".")
    assert "LIKENESS_ENGINE_DEVICE=auto (or cpu)" in message
    assert "LIKENESS_ENGINE_MODEL" not in message and "tiny" not in message


@pytest.mark.parametrize(
    ("device", "dtype", "setting"),
    [("gpu", "auto", "LIKENESS_ENGINE_DEVICE=gpu"), ("cpu", "int3", "LIKENESS_ENGINE_DTYPE=int3")],
)
def test_unknown_device_or_dtype_names_the_setting(device, dtype, setting):
    with pytest.raises(DeviceError, match=f"^{setting} is not a (device|dtype): use auto"):
        pick_device(device, dtype)


def test_tiny_model_reads_every_preset_whole_without_a_truncation_warning(pipe):
    """The byte tokenizer spends a token per character: the tiny model's context must hold each preset."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    diffusers_logger = logging.getLogger("diffusers")
    diffusers_logger.addHandler(handler)
    level = diffusers.utils.logging.get_verbosity()
    diffusers.utils.logging.set_verbosity_warning()
    try:
        longest = max(PRESETS.values(), key=lambda p: len(p.render("sks person")))
        Generator(pipe).generate(None, dataclasses.replace(longest, steps=2), "sks person", 1, seed=0)
    finally:
        diffusers.utils.logging.set_verbosity(level)
        diffusers_logger.removeHandler(handler)
    assert not [r for r in records if "truncated" in r.getMessage()]
    for preset in PRESETS.values():
        for text in (preset.render("sks person"), preset.negative_prompt):
            assert len(pipe.tokenizer(text).input_ids) <= pipe.tokenizer.model_max_length


def test_malformed_adapter_bytes_are_rejected(gen):
    with pytest.raises(ValueError, match="not a Likeness LoRA adapter"):
        gen.load_adapter("eve", b"not safetensors at all")
    bare = json.dumps({"__metadata__": {}}).encode()
    with pytest.raises(ValueError):
        gen.load_adapter("eve", len(bare).to_bytes(8, "little") + bare)


def _train_state(pipe) -> tuple:
    """What training must give back: adapters, grad flags, modes and attention processors."""
    processors = {k: type(v).__name__ for k, v in pipe.unet.attn_processors.items()}
    grads = any(p.requires_grad for c in (pipe.unet, pipe.text_encoder) for p in c.parameters())
    return loaded_adapters(pipe), grads, pipe.unet.training, pipe.text_encoder.training, processors


@pytest.mark.parametrize("prediction_type", ["sample", "flow_prediction"])
def test_unknown_prediction_type_is_a_clear_error_and_changes_nothing(photos, prediction_type):
    fresh = load_pipeline("tiny", CPU, torch.float32)
    fresh.scheduler = diffusers.DDPMScheduler.from_config(
        fresh.scheduler.config, prediction_type=prediction_type
    )
    before = _train_state(fresh)
    with pytest.raises(ValueError, match=f"prediction_type is '{prediction_type}'.*epsilon, v_prediction"):
        train_lora(fresh, photos, PROMPT, dataclasses.replace(CONFIG, steps=2))
    assert _train_state(fresh) == before


def test_v_prediction_models_train(photos):
    fresh = load_pipeline("tiny", CPU, torch.float32)
    fresh.scheduler = diffusers.DPMSolverMultistepScheduler.from_config(
        fresh.scheduler.config, prediction_type="v_prediction"
    )
    epsilon = train_lora(
        load_pipeline("tiny", CPU, torch.float32), photos, PROMPT, dataclasses.replace(CONFIG, steps=3)
    )
    velocity = train_lora(fresh, photos, PROMPT, dataclasses.replace(CONFIG, steps=3))
    assert all(np.isfinite(velocity.losses)) and velocity.losses != epsilon.losses


def test_speed_levers_give_the_same_training(pipe, photos, trained):
    """Encoding once (latents, prompt), SDPA and fused AdamW are speed-ups only: the same loss curve."""
    base = dataclasses.replace(CONFIG, steps=4, batch_size=2)
    before = _train_state(pipe)
    reference = train_lora(pipe, photos, PROMPT, base).losses
    uncached = train_lora(
        pipe, photos, PROMPT, dataclasses.replace(base, cache_latents=False, cache_text=False)
    )
    assert uncached.losses == pytest.approx(reference, rel=1e-5)
    eager = train_lora(pipe, photos, PROMPT, dataclasses.replace(base, attention="eager"))
    assert eager.losses == pytest.approx(reference, rel=1e-4)
    fused = train_lora(pipe, photos, PROMPT, dataclasses.replace(base, fused_adamw=True))
    assert fused.losses == pytest.approx(reference, rel=1e-4)
    assert _train_state(pipe) == before  # the eager processors are gone again, no adapter left


def test_random_flip_and_bf16_autocast_train_and_restore(pipe, photos, trained):
    before = _train_state(pipe)
    base = dataclasses.replace(CONFIG, steps=4, batch_size=2)
    plain = train_lora(pipe, photos, PROMPT, base).losses
    flipped = train_lora(pipe, photos, PROMPT, dataclasses.replace(base, random_flip=True)).losses
    assert all(np.isfinite(flipped)) and flipped != plain
    bf16 = train_lora(pipe, photos, PROMPT, dataclasses.replace(base, mixed_precision="bf16")).losses
    assert bf16 == pytest.approx(plain, rel=0.05) and bf16 != plain  # bf16 rounding, same training
    assert _train_state(pipe) == before and pipe.unet.dtype == torch.float32


@pytest.mark.parametrize(
    "bad", [{"attention": "flash"}, {"mixed_precision": "fp8"}, {"steps": 0}, {"resolution": 30}]
)
def test_train_config_rejects_bad_values(bad):
    with pytest.raises(ValueError):
        TrainConfig(**bad)
