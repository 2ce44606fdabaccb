"""Styled generation on the resident base pipeline, with per-user LoRA adapters swapped in from bytes."""

from __future__ import annotations

import hashlib
import warnings
from collections import OrderedDict
from collections.abc import Callable

import PIL.Image
import torch
from diffusers import DiffusionPipeline
from peft import LoraConfig, inject_adapter_in_model

from engine.ml.pipeline import (
    delete_adapter,
    lora_components,
    native_resolution,
    set_active_adapter,
    size_multiple,
)
from engine.ml.train import unpack_adapter
from engine.presets import Preset, preset_size

Progress = Callable[[float, str], None]


class GenerationStopped(Exception):
    """``should_stop()`` returned True during generation; no images are returned."""


def adapter_name(owner: str) -> str:
    """A safe, stable adapter name for ``owner``: no dots, never the training name, no raw id inside."""
    return "u_" + hashlib.sha256(owner.encode("utf-8")).hexdigest()[:24]


def _load_into_text_encoder(encoder: torch.nn.Module, state: dict, metadata: dict, name: str) -> None:
    """Inject adapter ``name`` into a transformers text encoder and copy its tensors in (peft primitives)."""
    config = LoraConfig(**metadata)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Already found a `peft_config`")
        inject_adapter_in_model(config, encoder, adapter_name=name)
    params = dict(encoder.named_parameters())
    for key, value in state.items():
        target = key.replace(".lora_A.", f".lora_A.{name}.").replace(".lora_B.", f".lora_B.{name}.")
        if target not in params:
            raise ValueError("adapter does not fit this model's text encoder")
        params[target].data.copy_(value)


def _delete(pipe: DiffusionPipeline, name: str) -> None:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Adapter .* was active which is now deleted")
        delete_adapter(pipe, name)


class Generator:
    """Owns the resident pipeline's adapters: at most ``cache_size`` users' LoRAs stay loaded (LRU)."""

    def __init__(self, pipe: DiffusionPipeline, cache_size: int = 4) -> None:
        if cache_size < 1:
            raise ValueError("cache_size must be at least 1")
        self.pipe = pipe
        self.cache_size = cache_size
        self._loaded: OrderedDict[str, str] = OrderedDict()  # owner -> adapter name, least recent first

    def owners(self) -> list[str]:
        """Owners whose adapters are loaded now, least recently used first."""
        return list(self._loaded)

    def has_adapter(self, owner: str) -> bool:
        """Whether ``owner``'s adapter is loaded in the pipeline now."""
        return owner in self._loaded

    def load_adapter(self, owner: str, adapter: bytes) -> None:
        """Load ``owner``'s adapter from bytes (replacing an older one), evicting the least recently used."""
        state, metadata, _ = unpack_adapter(adapter)
        self.forget(owner)
        while len(self._loaded) >= self.cache_size:
            _, evicted = self._loaded.popitem(last=False)
            _delete(self.pipe, evicted)
        name = adapter_name(owner)
        pipe = self.pipe
        try:
            # The UNet through diffusers; metadata carries r/lora_alpha/targets, so the scale survives.
            pipe.load_lora_into_unet(
                state,
                network_alphas=None,
                unet=pipe.unet,
                adapter_name=name,
                metadata=metadata,
                _pipeline=pipe,
            )
            for prefix, encoder in lora_components(pipe).items():
                part = {
                    k.removeprefix(prefix + "."): v for k, v in state.items() if k.startswith(prefix + ".")
                }
                if prefix == "unet" or not part:
                    continue
                meta = {
                    k.removeprefix(prefix + "."): v for k, v in metadata.items() if k.startswith(prefix + ".")
                }
                _load_into_text_encoder(encoder, part, meta, name)
        except Exception:
            _delete(pipe, name)
            raise
        set_active_adapter(pipe, None)
        self._loaded[owner] = name

    def forget(self, owner: str) -> None:
        """Remove ``owner``'s adapter from the pipeline, if loaded."""
        name = self._loaded.pop(owner, None)
        if name is not None:
            _delete(self.pipe, name)

    @torch.no_grad()
    def generate(
        self,
        owner: str | None,
        preset: Preset,
        token: str,
        count: int,
        seed: int,
        progress: Progress | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> list[PIL.Image.Image]:
        """``count`` images of ``preset`` with ``owner``'s adapter (``None``: the base model).

        Only that owner's adapter is active. Image ``i`` uses seed ``seed + i`` on a CPU generator, so the
        result is the same on every device and for every ``count``.
        """
        if count < 1:
            raise ValueError("count must be at least 1")
        if owner is not None and owner not in self._loaded:
            raise KeyError("no adapter loaded for this owner; call load_adapter first")
        pipe = self.pipe
        name = None if owner is None else self._loaded[owner]
        if owner is not None:
            self._loaded.move_to_end(owner)
        set_active_adapter(pipe, name)

        width, height = preset_size(preset, native_resolution(pipe), size_multiple(pipe))
        steps = preset.steps

        def on_step_end(p, step: int, timestep, kwargs: dict) -> dict:
            if should_stop and should_stop():
                p._interrupt = True
            elif progress:
                progress((step + 1) / steps, f"generating step {step + 1}/{steps}")
            return kwargs

        try:
            result = pipe(
                prompt=preset.render(token),
                negative_prompt=preset.negative_prompt or None,
                num_inference_steps=steps,
                guidance_scale=preset.guidance,
                width=width,
                height=height,
                num_images_per_prompt=count,
                generator=[torch.Generator("cpu").manual_seed(seed + i) for i in range(count)],
                callback_on_step_end=on_step_end,
                output_type="pil",
            )
        finally:
            set_active_adapter(pipe, None)
        if should_stop and pipe.interrupt:
            raise GenerationStopped("generation stopped on request")
        return list(result.images)
