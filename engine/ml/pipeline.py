"""Load the resident pipeline: tiny (offline), a Hub id, a diffusers folder or a single checkpoint file."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
from diffusers import (
    DiffusionPipeline,
    DPMSolverMultistepScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
)

from engine.ml.tiny import build_tiny_pipeline

# Built offline with random weights (engine/ml/tiny.py): tests, smoke runs and benchmarks only.
_TINY = {"tiny": "tiny", "tiny-sdxl": "tiny-sdxl", "random:sd15": "sd15", "random:sdxl": "sdxl"}
_CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt")
_HINT = "use a local diffusers folder, a .safetensors checkpoint, or 'tiny' for a smoke test"


class ModelLoadError(Exception):
    """The configured model cannot be loaded. ``str(e)`` is one line that says what to do."""


def _one_line(text: object, limit: int = 200) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


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
    path = Path(model).expanduser()
    no_safety = {"safety_checker": None, "requires_safety_checker": False}
    if path.is_file() and path.suffix in _CHECKPOINT_SUFFIXES:
        cls = StableDiffusionXLPipeline if _is_sdxl_checkpoint(path) else StableDiffusionPipeline
        extra = no_safety if cls is StableDiffusionPipeline else {}
        return cls.from_single_file(str(path), torch_dtype=dtype, local_files_only=_offline(), **extra)
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise ModelLoadError(
                f"model folder {path} has no model_index.json; it is not a diffusers pipeline"
            )
        return DiffusionPipeline.from_pretrained(str(path), torch_dtype=dtype, **no_safety)
    if path.suffix in _CHECKPOINT_SUFFIXES or model.startswith((".", "/", "~")):
        raise ModelLoadError(f"model file {model} does not exist; {_HINT}")
    # A Hugging Face id. HF_HUB_OFFLINE=1 means: only what is already in the local cache.
    return DiffusionPipeline.from_pretrained(
        model, torch_dtype=dtype, local_files_only=_offline(), **no_safety
    )


def load_pipeline(model: str, device: torch.device, dtype: torch.dtype) -> DiffusionPipeline:
    """Load ``model`` onto ``device`` in ``dtype``, ready for inference and LoRA training.

    ``model`` is ``"tiny"`` (or ``"tiny-sdxl"``, ``"random:sd15"``, ``"random:sdxl"``: offline, random
    weights), a Hugging Face id, a local diffusers folder, or a single ``.safetensors`` / ``.ckpt`` file.
    SD1.x/2.x and SDXL are supported. The safety checker and progress bars are off; the sampler is
    DPM-Solver++ (2M), which gives clean results in 25-35 steps.
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
    except ModelLoadError:
        raise
    except Exception as e:
        if _offline() and model not in _TINY and not Path(model).expanduser().exists():
            raise ModelLoadError(
                f"model {model!r} is not in the local Hugging Face cache and HF_HUB_OFFLINE=1; "
                f"download it once online (hf download {model}) or {_HINT}"
            ) from None
        raise ModelLoadError(
            f"cannot load model {model!r}: {type(e).__name__}: {_one_line(e)}; {_HINT}"
        ) from None

    if not isinstance(pipe, StableDiffusionPipeline | StableDiffusionXLPipeline):
        raise ModelLoadError(
            f"model {model!r} is a {type(pipe).__name__}; only SD 1.x/2.x and SDXL are supported"
        )
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    pipe.to(device)
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
