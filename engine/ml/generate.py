"""Styled generation on the resident base pipeline, with per-user LoRA adapters swapped in from bytes.

Adapters live in *slots*: peft adapters named ``slot<n>``, injected once and then reused. A slot holds one
owner's weights at a time. When the next owner's adapter has the same layout (same keys and shapes, same
config apart from ``lora_alpha``), its tensors are copied into the slot's parameters in place and the
layers' scalings are set from its ``lora_alpha``: no peft module walk, so a swap costs milliseconds.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import PIL.Image
import torch
from diffusers import DiffusionPipeline
from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.tuners_utils import BaseTunerLayer

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
Layout = tuple[tuple[tuple[str, tuple[int, ...]], ...], str]

# Slot names are never reused within a process, so two Generators on one pipe never share an adapter.
_slot_numbers = itertools.count()


class GenerationStopped(Exception):
    """``should_stop()`` returned True during generation; no images are returned."""


def new_slot_name() -> str:
    """A fresh adapter name: no dots, never the training name, nothing of the owner in it."""
    return f"slot{next(_slot_numbers)}"


def adapter_layout(state: dict[str, torch.Tensor], metadata: dict) -> Layout:
    """What must match for one adapter's tensors to be copied into another's slot.

    Every key and shape, and the whole LoRA config except ``lora_alpha`` values (a slot takes each
    owner's alpha), unless an ``alpha_pattern`` is set, in which case alphas must match too.
    """
    config = dict(metadata)
    for key in metadata:
        prefix = key.rpartition(".")[0]
        if key.endswith(".lora_alpha") and not metadata.get(f"{prefix}.alpha_pattern"):
            config[key] = "*"
    shapes = tuple(sorted((k, tuple(v.shape)) for k, v in state.items()))
    return shapes, json.dumps(config, sort_keys=True, default=str)


@dataclass(eq=False)
class _Slot:
    """One injected adapter and the precomputed handles to refill it."""

    name: str
    layout: Layout
    params: list[torch.nn.Parameter]  # every tensor of this adapter, for wiping
    copies: list[tuple[torch.nn.Parameter, str]] | None  # (parameter, state key); None: not refillable
    scaled: list[tuple[BaseTunerLayer, str, bool]]  # (layer, component prefix, use_rslora)

    @torch.no_grad()
    def fill(self, state: dict[str, torch.Tensor], metadata: dict) -> None:
        """Copy an adapter of this slot's layout into it and set its layers' scalings from ``lora_alpha``."""
        for param, key in self.copies:
            param.copy_(state[key])
        for layer, prefix, rslora in self.scaled:
            alpha = metadata[f"{prefix}.lora_alpha"]
            r = layer.r[self.name]
            layer.lora_alpha[self.name] = alpha
            layer.scaling[self.name] = alpha / math.sqrt(r) if rslora else alpha / r

    @torch.no_grad()
    def wipe(self) -> None:
        """Zero every tensor, so the owner's weights do not linger in memory."""
        for param in self.params:
            param.zero_()


def _split(mapping: dict, prefix: str) -> dict:
    return {k.removeprefix(prefix + "."): v for k, v in mapping.items() if k.startswith(prefix + ".")}


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


def _inject(pipe: DiffusionPipeline, name: str, state: dict, metadata: dict) -> None:
    """The full load: inject adapter ``name`` into every component the state dict has tensors for."""
    # The UNet through diffusers; metadata carries r/lora_alpha/targets, so the scale survives.
    with warnings.catch_warnings():  # several adapters in one UNet is the point here
        warnings.filterwarnings("ignore", message="Already found a `peft_config`")
        pipe.load_lora_into_unet(
            state, network_alphas=None, unet=pipe.unet, adapter_name=name, metadata=metadata, _pipeline=pipe
        )
    for prefix, encoder in lora_components(pipe).items():
        part = _split(state, prefix)
        if prefix != "unet" and part:
            _load_into_text_encoder(encoder, part, _split(metadata, prefix), name)


def _build_slot(pipe: DiffusionPipeline, name: str, layout: Layout, state: dict, metadata: dict) -> _Slot:
    """Find the tensors and layers of freshly injected adapter ``name``; refillable if every tensor of the
    adapter corresponds one to one to a key of ``state``."""
    marker = f".{name}."
    params, copies, scaled = [], [], []
    by_key: dict[str, torch.nn.Parameter] = {}
    for prefix, module in lora_components(pipe).items():
        for param_name, param in module.named_parameters():
            if marker in param_name:
                params.append(param)
                by_key[f"{prefix}.{param_name.replace(marker, '.')}"] = param
        follows_alpha = f"{prefix}.lora_alpha" in metadata and not metadata.get(f"{prefix}.alpha_pattern")
        rslora = bool(metadata.get(f"{prefix}.use_rslora"))
        for layer in module.modules():
            if follows_alpha and isinstance(layer, BaseTunerLayer) and name in getattr(layer, "scaling", {}):
                scaled.append((layer, prefix, rslora))
    copies = [(by_key[key], key) for key in state if key in by_key]
    refillable = len(copies) == len(state) == len(by_key)
    return _Slot(name, layout, params, copies if refillable else None, scaled)


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
        self._loaded: OrderedDict[str, str] = OrderedDict()  # owner -> slot name, least recent first
        self._slots: dict[str, _Slot] = {}  # slot name -> slot, one per loaded owner

    def owners(self) -> list[str]:
        """Owners whose adapters are loaded now, least recently used first."""
        return list(self._loaded)

    def has_adapter(self, owner: str) -> bool:
        """Whether ``owner``'s adapter is loaded in the pipeline now."""
        return owner in self._loaded

    def load_adapter(self, owner: str, adapter: bytes) -> None:
        """Load ``owner``'s adapter from bytes (replacing an older one), evicting the least recently used.

        The adapter goes into the owner's own slot, or the least recently used owner's slot, when the
        layout fits; otherwise into a newly injected slot.
        """
        state, metadata, _ = unpack_adapter(adapter)
        layout = adapter_layout(state, metadata)
        slot = self._take_slot(owner, layout)
        if slot is not None:
            try:
                slot.fill(state, metadata)
            except Exception:
                self._drop(slot)
                raise
        else:
            name = new_slot_name()
            try:
                _inject(self.pipe, name, state, metadata)
            except Exception:
                _delete(self.pipe, name)
                raise
            set_active_adapter(self.pipe, None)  # injecting activates the new adapter; all are off at rest
            slot = _build_slot(self.pipe, name, layout, state, metadata)
            self._slots[name] = slot
        self._loaded[owner] = slot.name

    def _take_slot(self, owner: str, layout: Layout) -> _Slot | None:
        """Free a refillable slot of ``layout`` for ``owner`` (its own, else the LRU's when the cache is
        full), or make room for a new one and return ``None``."""
        own = self._loaded.pop(owner, None)
        if own is not None:
            slot = self._slots[own]
            if slot.copies is not None and slot.layout == layout:
                return slot
            self._drop(slot)
        while len(self._loaded) >= self.cache_size:
            _, name = self._loaded.popitem(last=False)
            slot = self._slots[name]
            if slot.copies is not None and slot.layout == layout:
                return slot
            self._drop(slot)
        return None

    def _drop(self, slot: _Slot) -> None:
        """Wipe a slot's tensors and remove it from the pipeline."""
        slot.wipe()
        self._slots.pop(slot.name, None)
        _delete(self.pipe, slot.name)

    def forget(self, owner: str) -> None:
        """Remove ``owner``'s adapter from the pipeline, if loaded; its tensors are zeroed first."""
        name = self._loaded.pop(owner, None)
        if name is not None:
            self._drop(self._slots[name])

    @contextlib.contextmanager
    def active(self, owner: str | None) -> Iterator[None]:
        """Within the block only ``owner``'s adapter acts (``None``: the base model), also in pipelines built
        on the resident pipeline's layers (video). Marks the owner most recently used; all off afterwards."""
        if owner is not None and owner not in self._loaded:
            raise KeyError("no adapter loaded for this owner; call load_adapter first")
        if owner is not None:
            self._loaded.move_to_end(owner)
        set_active_adapter(self.pipe, None if owner is None else self._loaded[owner])
        try:
            yield
        finally:
            set_active_adapter(self.pipe, None)

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
