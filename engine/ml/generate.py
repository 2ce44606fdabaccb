"""Styled generation on the resident base pipeline, with per-user LoRA adapters swapped in from bytes.

Besides text-to-image, the same loaded components (and the owner's adapter) serve two follow-up passes,
through pipelines made with ``from_pipe`` (no weights copied): ``refine_face`` regenerates a face region
at the model's resolution with an inpainting pipeline and blends it back, and ``upscale`` runs an
image-to-image pass at twice the size with tiled VAE encoding and decoding, so memory stays bounded.

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
from typing import Any

import PIL.Image
import PIL.ImageDraw
import PIL.ImageFilter
import torch
from diffusers import AutoPipelineForImage2Image, AutoPipelineForInpainting, DiffusionPipeline
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

Box = tuple[int, int, int, int]  # left, top, right, bottom in pixels

REFINE_STRENGTH = 0.4  # how much of the face region is regenerated (ADetailer's default is 0.4)
REFINE_CONTEXT = 2.0  # the regenerated square is this many face sides wide: some hair, neck and background
UPSCALE_STRENGTH = 0.3  # enough to add detail at twice the size, too little to change the picture
BATCH = 4  # images per pipeline call; more candidates are made in several calls (same seeds either way)

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
        self._pipes: dict[str, DiffusionPipeline] = {}  # "inpaint" / "img2img", sharing pipe's modules

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

    def _derived(self, kind: str) -> DiffusionPipeline:
        """The inpainting or image-to-image pipeline sharing this pipeline's modules (made once)."""
        if kind not in self._pipes:
            auto = {"inpaint": AutoPipelineForInpainting, "img2img": AutoPipelineForImage2Image}[kind]
            derived = auto.from_pipe(self.pipe)
            derived.set_progress_bar_config(disable=True)
            self._pipes[kind] = derived
        return self._pipes[kind]

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
        result is the same on every device and for every ``count``; at most ``BATCH`` images per call.
        """
        if count < 1:
            raise ValueError("count must be at least 1")
        width, height = preset_size(preset, native_resolution(self.pipe), size_multiple(self.pipe))
        images: list[PIL.Image.Image] = []
        with self.active(owner):
            for start in range(0, count, BATCH):
                size = min(BATCH, count - start)
                done = start

                def report(fraction: float, message: str, done: int = done, size: int = size) -> None:
                    if progress:
                        progress((done + fraction * size) / count, message)

                images += _run(
                    self.pipe,
                    "generating",
                    preset.steps,
                    report,
                    should_stop,
                    prompt=preset.render(token),
                    negative_prompt=preset.negative_prompt or None,
                    num_inference_steps=preset.steps,
                    guidance_scale=preset.guidance,
                    width=width,
                    height=height,
                    num_images_per_prompt=size,
                    generator=[
                        torch.Generator("cpu").manual_seed(seed + i) for i in range(start, start + size)
                    ],
                )
        return images

    @torch.no_grad()
    def refine_face(
        self,
        owner: str | None,
        preset: Preset,
        token: str,
        image: PIL.Image.Image,
        face: Box,
        seed: int,
        progress: Progress | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> PIL.Image.Image:
        """``image`` with the region around ``face`` regenerated by the inpainting pipeline and blended back.

        The square around the face (``REFINE_CONTEXT`` face sides, inside the image) is scaled up to the
        model's native resolution (never down), partly re-noised (``REFINE_STRENGTH``) and denoised with the
        preset's prompt and ``owner``'s adapter, under an elliptic mask over the face. The result is scaled
        back and pasted through the same mask, feathered, so no seam shows. The size never changes.
        """
        crop = face_crop_box(face, image.width, image.height)
        side = crop[2] - crop[0]
        multiple = size_multiple(self.pipe)
        render = max(native_resolution(self.pipe), math.ceil(side / multiple) * multiple)
        region = image.crop(crop).resize((render, render), PIL.Image.Resampling.LANCZOS)
        inner = [(v - o) * render / side for v, o in zip(face, crop[:2] * 2, strict=True)]
        mask = face_mask(render, inner)
        denoised, redraw = redraw_arguments(preset, token, REFINE_STRENGTH, seed)
        with self.active(owner):
            (refined,) = _run(
                self._derived("inpaint"),
                "refining the face",
                denoised,
                progress,
                should_stop,
                image=region,
                mask_image=mask,
                width=render,
                height=render,
                **redraw,
            )
        feathered = mask.filter(PIL.ImageFilter.GaussianBlur(render / 32))
        blended = PIL.Image.composite(refined.convert("RGB"), region, feathered)
        out = image.convert("RGB")
        out.paste(blended.resize((side, side), PIL.Image.Resampling.LANCZOS), crop[:2])
        return out

    @torch.no_grad()
    def upscale(
        self,
        owner: str | None,
        preset: Preset,
        token: str,
        image: PIL.Image.Image,
        seed: int,
        factor: int = 2,
        progress: Progress | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> PIL.Image.Image:
        """``image`` at ``factor`` times its width and height: a Lanczos resize, then an image-to-image pass
        (``UPSCALE_STRENGTH``) with the preset's prompt and ``owner``'s adapter that redraws fine detail.

        The VAE encodes and decodes in tiles during the pass, so memory grows with the tile, not the image.
        """
        if factor < 2:
            return image
        big = image.convert("RGB").resize(
            (image.width * factor, image.height * factor), PIL.Image.Resampling.LANCZOS
        )
        denoised, redraw = redraw_arguments(preset, token, UPSCALE_STRENGTH, seed)
        vae = self.pipe.vae
        tiling = getattr(vae, "use_tiling", False)
        vae.enable_tiling()
        try:
            with self.active(owner):
                (result,) = _run(
                    self._derived("img2img"),
                    "adding detail",
                    denoised,
                    progress,
                    should_stop,
                    image=big,
                    **redraw,
                )
        finally:
            if not tiling:
                vae.disable_tiling()
        return result


def redraw_arguments(preset: Preset, token: str, strength: float, seed: int) -> tuple[int, dict[str, Any]]:
    """For a pass that redraws an image partly (face refinement, the 2x pass): the steps it denoises, and
    the pipeline arguments it shares with the other such pass (the preset's prompt and guidance, enough
    steps that `strength` of them is at least one)."""
    steps = max(preset.steps, math.ceil(1 / strength))
    return max(1, int(steps * strength)), {
        "prompt": preset.render(token),
        "negative_prompt": preset.negative_prompt or None,
        "strength": strength,
        "num_inference_steps": steps,
        "guidance_scale": preset.guidance,
        "generator": torch.Generator("cpu").manual_seed(seed),
    }


def face_crop_box(face: Box, width: int, height: int) -> Box:
    """The square around ``face`` that the refinement redraws: ``REFINE_CONTEXT`` face sides, inside the
    image (shrunk and shifted rather than padded)."""
    left, top, right, bottom = face
    side = min(round(max(right - left, bottom - top) * REFINE_CONTEXT), width, height)
    side = max(side, 8)
    cx, cy = (left + right) / 2, (top + bottom) / 2
    x = min(max(0, round(cx - side / 2)), width - side)
    y = min(max(0, round(cy - side / 2)), height - side)
    return x, y, x + side, y + side


def face_mask(side: int, face: list[float]) -> PIL.Image.Image:
    """A ``side`` x ``side`` mask (L): white in an ellipse 1.3 times the face box (forehead to chin)."""
    left, top, right, bottom = face
    cx, cy = (left + right) / 2, (top + bottom) / 2
    rx, ry = (right - left) * 0.65, (bottom - top) * 0.75
    mask = PIL.Image.new("L", (side, side), 0)
    PIL.ImageDraw.Draw(mask).ellipse((cx - rx, cy - ry * 1.1, cx + rx, cy + ry * 0.9), fill=255)
    return mask


def _run(
    pipe: DiffusionPipeline,
    label: str,
    steps: int,
    progress: Progress | None,
    should_stop: Callable[[], bool] | None,
    **kwargs,
) -> list[PIL.Image.Image]:
    """One pipeline call with step progress and cooperative stopping (``GenerationStopped``)."""

    def on_step_end(p, step: int, timestep, callback_kwargs: dict) -> dict:
        if should_stop and should_stop():
            p._interrupt = True
        elif progress:
            progress(min(1.0, (step + 1) / steps), f"{label} step {min(step + 1, steps)}/{steps}")
        return callback_kwargs

    result = pipe(callback_on_step_end=on_step_end, output_type="pil", **kwargs)
    if should_stop and pipe.interrupt:
        raise GenerationStopped("generation stopped on request")
    return list(result.images)
