"""Load the resident pipeline: tiny (offline), a Hub id, a diffusers folder or a single checkpoint file."""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

import torch
from diffusers import (
    DiffusionPipeline,
    DPMSolverMultistepScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
)

from engine.errors import StartupError
from engine.ml.tiny import build_tiny_pipeline

# Built offline with random weights (engine/ml/tiny.py): tests, smoke runs and benchmarks only.
_TINY = {"tiny": "tiny", "tiny-sdxl": "tiny-sdxl", "random:sd15": "sd15", "random:sdxl": "sdxl"}
_CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt")
_TRY_TINY = "or set LIKENESS_ENGINE_MODEL=tiny to try the product on a tiny random model"
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


class ModelLoadError(StartupError):
    """The configured model cannot be loaded.

    ``str(e)`` is one complete line that names `LIKENESS_ENGINE_MODEL` (or the setting at fault) and the fix.
    """


def _sentences(error: BaseException, budget: int = 300) -> str:
    """`Type: message` on one line: whole sentences, as many as fit in about `budget` characters."""
    text = " ".join(str(error).split())
    if not text:
        return type(error).__name__
    kept = ""
    for sentence in _SENTENCE_END.split(text):
        if kept and len(kept) + len(sentence) > budget:
            break
        kept = f"{kept} {sentence}".strip()
    return f"{type(error).__name__}: {kept.rstrip('.:;, ')}"


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _looks_like_path(model: str) -> bool:
    """A filesystem path rather than a Hugging Face id (`org/name`)."""
    return (
        model.startswith((".", "/", "~"))
        or Path(model).suffix in _CHECKPOINT_SUFFIXES
        or model.count("/") > 1
    )


def _cached(model: str) -> bool | None:
    """Whether `model`'s model_index.json is in the local Hugging Face cache (None: not a valid Hub id)."""
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.errors import HFValidationError

    try:
        return isinstance(try_to_load_from_cache(model, "model_index.json"), str)
    except HFValidationError:
        return None


def _is_sdxl_checkpoint(path: Path) -> bool:
    """SDXL single-file checkpoints carry a second text encoder under ``conditioner.embedders.1``."""
    marker = "conditioner.embedders.1"
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            return any(k.startswith(marker) for k in f.keys())  # noqa: SIM118 (safe_open is not a dict)
    state = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    state = state.get("state_dict", state)
    return any(k.startswith(marker) for k in state)


def _from_source(model: str, dtype: torch.dtype) -> DiffusionPipeline:
    setting = f"LIKENESS_ENGINE_MODEL={model}"
    path = Path(model).expanduser()
    no_safety = {"safety_checker": None, "requires_safety_checker": False}
    if path.is_file():
        if path.suffix not in _CHECKPOINT_SUFFIXES:
            raise ModelLoadError(
                f"{setting} is a file but not a checkpoint: give a .safetensors (or .ckpt) file, "
                "a diffusers folder (with model_index.json) or a Hugging Face id."
            )
        cls = StableDiffusionXLPipeline if _is_sdxl_checkpoint(path) else StableDiffusionPipeline
        extra = no_safety if cls is StableDiffusionPipeline else {}
        return cls.from_single_file(str(path), torch_dtype=dtype, local_files_only=_offline(), **extra)
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise ModelLoadError(
                f"{setting} is a folder without model_index.json, so not a diffusers pipeline: point it at "
                "the folder that holds model_index.json, or at a single .safetensors checkpoint."
            )
        return DiffusionPipeline.from_pretrained(str(path), torch_dtype=dtype, **no_safety)
    cached = None if _looks_like_path(model) else _cached(model)
    if cached is None:
        raise ModelLoadError(
            f"{setting}: no such file or folder ({path.absolute()}; relative paths are relative to the "
            "folder the command was started in): give an existing diffusers folder or .safetensors file, "
            f"a Hugging Face id, {_TRY_TINY}."
        )
    if not cached and _offline():
        raise ModelLoadError(
            f"{setting} is not in the local Hugging Face cache and HF_HUB_OFFLINE=1 allows no download: "
            f"fetch it once with `hf download {model}` (online), {_TRY_TINY}."
        )
    # A Hugging Face id: from the cache, downloaded first when online and not cached yet.
    try:
        return DiffusionPipeline.from_pretrained(
            model, torch_dtype=dtype, local_files_only=_offline(), **no_safety
        )
    except Exception as error:
        raise ModelLoadError(_hub_problem(model, error, cached)) from error


def _hub_problem(model: str, error: BaseException, cached: bool) -> str:
    """One line for a Hugging Face id that did not load: gated, unknown, not downloadable, half cached."""
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    setting = f"LIKENESS_ENGINE_MODEL={model}"
    chain: list[BaseException] = []
    cause: BaseException | None = error
    while cause is not None and cause not in chain:
        chain.append(cause)
        cause = cause.__cause__ or cause.__context__
    if any(isinstance(e, GatedRepoError) for e in chain):
        return (
            f"{setting} is a gated model: accept its licence on https://huggingface.co/{model} and log in "
            "with `hf auth login` (or set HF_TOKEN), then start again."
        )
    if any(isinstance(e, RepositoryNotFoundError) for e in chain):
        return (
            f"{setting}: Hugging Face has no such model (check the id; a private model needs "
            f"`hf auth login`), {_TRY_TINY}."
        )
    if not cached:
        return (
            f"{setting} is not in the local Hugging Face cache and could not be downloaded from "
            f"huggingface.co: check the network (proxy, HF_ENDPOINT), or fetch it with `hf download {model}` "
            f"and start with HF_HUB_OFFLINE=1, {_TRY_TINY}."
        )
    return (
        f"{setting} is only partly in the local Hugging Face cache or cannot be read from it "
        f"({_sentences(error, 120)}): complete it with `hf download {model}`."
    )


def load_pipeline(model: str, device: torch.device, dtype: torch.dtype) -> DiffusionPipeline:
    """Load ``model`` onto ``device`` in ``dtype``, ready for inference and LoRA training.

    ``model`` is ``"tiny"`` (or ``"tiny-sdxl"``, ``"random:sd15"``, ``"random:sdxl"``: offline, random
    weights), a Hugging Face id, a local diffusers folder, or a single ``.safetensors`` / ``.ckpt`` file.
    SD1.x/2.x and SDXL are supported. The safety checker and progress bars are off; the sampler is
    DPM-Solver++ (2M), which gives clean results in 25-35 steps. Any failure is a `ModelLoadError`.
    """
    try:
        if model in _TINY:
            pipe = build_tiny_pipeline(_TINY[model], device=device)
            for module in pipe.components.values():
                if isinstance(module, torch.nn.Module) and dtype != torch.float32:
                    module.to(dtype=dtype)
        else:
            with warnings.catch_warnings():
                # diffusers 0.42 renames torch_dtype to dtype; the old name works on every supported version.
                warnings.filterwarnings("ignore", message=".*torch_dtype.*", category=FutureWarning)
                pipe = _from_source(model, dtype)
        if not isinstance(pipe, StableDiffusionPipeline | StableDiffusionXLPipeline):
            raise ModelLoadError(
                f"LIKENESS_ENGINE_MODEL={model} is a {type(pipe).__name__}; only Stable Diffusion 1.x/2.x "
                "and SDXL pipelines are supported."
            )
        pipe.to(device)
    except ModelLoadError:
        raise
    except torch.OutOfMemoryError:
        raise ModelLoadError(
            f"LIKENESS_ENGINE_MODEL={model} does not fit in the memory of {device}: free it, choose a "
            "smaller model or LIKENESS_ENGINE_DTYPE=float16, or set LIKENESS_ENGINE_DEVICE=cpu."
        ) from None
    except Exception as error:
        raise ModelLoadError(
            f"LIKENESS_ENGINE_MODEL={model} cannot be loaded: {_sentences(error)}."
        ) from None

    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    for module in pipe.components.values():
        if isinstance(module, torch.nn.Module):
            module.eval()
            module.requires_grad_(False)
    if getattr(pipe, "safety_checker", None) is not None:
        pipe.safety_checker = None
    pipe.vae.enable_slicing()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def native_resolution(pipe: DiffusionPipeline) -> int:
    """Side length the model was trained at: 512 SD1.5, 768 SD2.x-v, 1024 SDXL, 64 tiny."""
    return int(pipe.unet.config.sample_size) * int(pipe.vae_scale_factor)


def size_multiple(pipe: DiffusionPipeline) -> int:
    """Image sides must be a multiple of this: the VAE factor times the UNet's total downsampling, at least 8.

    64 for SD1.5 (8 x 2**3), 32 for SDXL (8 x 2**2), 8 for tiny (the pipelines' own minimum).
    """
    return max(8, int(pipe.vae_scale_factor) * 2 ** (len(pipe.unet.config.block_out_channels) - 1))


def lora_components(pipe: DiffusionPipeline) -> dict[str, torch.nn.Module]:
    """The modules LoRA adapters can live in, by their state-dict prefix."""
    names = ("unet", "text_encoder", "text_encoder_2")
    return {name: getattr(pipe, name) for name in names if getattr(pipe, name, None) is not None}


def set_active_adapter(pipe: DiffusionPipeline, name: str | None) -> None:
    """Make ``name`` the only LoRA adapter that acts; ``None`` turns every adapter off (the base model).

    Works layer by layer, so a layer that lacks ``name`` (another user's text-encoder LoRA, say) is switched
    off rather than left on: two users' adapters never mix.
    """
    from peft.tuners.tuners_utils import BaseTunerLayer

    for module in lora_components(pipe).values():
        for layer in module.modules():
            if not isinstance(layer, BaseTunerLayer):
                continue
            if name is not None and name in layer.lora_A:
                layer.set_adapter(name)
                layer.enable_adapters(True)
            else:
                layer.enable_adapters(False)


def loaded_adapters(pipe: DiffusionPipeline) -> set[str]:
    """Names of every LoRA adapter present in any layer of any component of ``pipe``."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    names: set[str] = set()
    for module in lora_components(pipe).values():
        for layer in module.modules():
            if isinstance(layer, BaseTunerLayer):
                names.update(layer.lora_A.keys())
    return names


def delete_adapter(pipe: DiffusionPipeline, name: str) -> None:
    """Remove adapter ``name`` (its layers and config) from every component that has it."""
    from diffusers import ModelMixin
    from diffusers.utils.peft_utils import delete_adapter_layers

    for module in lora_components(pipe).values():
        if isinstance(module, ModelMixin) and name in (getattr(module, "peft_config", None) or {}):
            module.delete_adapters(name)
        else:
            delete_adapter_layers(module, name)
