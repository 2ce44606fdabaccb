"""DreamBooth-style LoRA training on the resident pipeline, entirely in memory.

The loop follows diffusers' examples/dreambooth/train_dreambooth_lora.py and train_dreambooth_lora_sdxl.py
(prior preservation off): encode the photos to VAE latents once, add noise at a random timestep, and
teach LoRA layers on the UNet's attention projections to predict that noise from the instance prompt.
The photos never touch the disk and the adapter comes back as safetensors bytes.
"""

from __future__ import annotations

import json
import math
import struct
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import PIL.Image
import safetensors.torch
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, DiffusionPipeline
from peft import LoraConfig, inject_adapter_in_model

from engine.ml.pipeline import delete_adapter, lora_components, native_resolution, set_active_adapter

TRAIN_ADAPTER = "likeness_training"
ADAPTER_FORMAT = "likeness-lora-1"
# diffusers reads LoRA hyper-parameters (rank, lora_alpha, targets) from this safetensors metadata key.
LORA_METADATA_KEY = "lora_adapter_metadata"

Progress = Callable[[float, str], None]


@dataclass
class TrainConfig:
    """Every knob of a training run, with defaults that work for SD1.5 and SDXL.

    Sources: the README of diffusers' examples/dreambooth (train_dreambooth_lora.py for SD1.5,
    README_sdxl.md for train_dreambooth_lora_sdxl.py) trains LoRA with ``--learning_rate=1e-4
    --max_train_steps=500 --train_batch_size=1 --lr_scheduler=constant`` at the model's native resolution
    (512 / 1024) and sets ``lora_alpha = rank``. Their ``--rank`` default is 4; we use 16, our own choice
    (a face needs more detail than the READMEs' dog example; 16-32 is common in community face LoRAs),
    not yet validated on real weights here. Adapters stay small: 6.4 MB for SD1.5, 46 MB for SDXL (fp16).
    ``max_grad_norm=1.0`` is the scripts' default.
    """

    steps: int = 500
    rank: int = 16
    alpha: float = 16.0
    learning_rate: float = 1e-4
    resolution: int = 0  # 0 = the model's native resolution (512 SD1.5, 768 SD2.x-v, 1024 SDXL)
    batch_size: int = 1
    train_text_encoder: bool = False  # the scripts' default; the UNet alone learns a face well
    seed: int = 0
    gradient_checkpointing: bool | None = (
        None  # None = on for CUDA cards under 40 GB (see _needs_checkpointing)
    )
    max_grad_norm: float = 1.0
    random_flip: bool = False  # faces are not symmetric; the scripts also default to no flip
    target_modules: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")
    text_encoder_target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "out_proj")

    def __post_init__(self) -> None:
        if self.steps < 1 or self.rank < 1 or self.batch_size < 1:
            raise ValueError("steps, rank and batch_size must be at least 1")
        if self.learning_rate <= 0 or self.alpha <= 0:
            raise ValueError("learning_rate and alpha must be positive")
        if self.resolution < 0 or self.resolution % 8:
            raise ValueError("resolution must be 0 (native) or a positive multiple of 8")


@dataclass
class TrainResult:
    """What a run produced: the adapter as safetensors bytes (with its LoRA config), and the loss curve."""

    adapter: bytes
    losses: list[float]
    steps: int
    seconds: float


class TrainingStopped(Exception):
    """``should_stop()`` returned True; nothing was produced and the pipeline is back to how it was."""


# --- adapter bytes -------------------------------------------------------------------------------------


def pack_adapter(
    state_dict: dict[str, torch.Tensor], lora_configs: dict[str, LoraConfig], info: dict
) -> bytes:
    """Serialize a prefixed LoRA state dict to safetensors bytes, with each component's ``LoraConfig``.

    The metadata is diffusers' own layout (``lora_adapter_metadata`` = JSON of ``{"unet.r": 16,
    "unet.lora_alpha": 16.0, ...}``), so ``lora_alpha`` survives and the bytes also load with
    ``pipe.load_lora_weights(path)`` once written to a file.
    """
    packed = {}
    for prefix, config in lora_configs.items():
        for key, value in config.to_dict().items():
            packed[f"{prefix}.{key}"] = sorted(value) if isinstance(value, set) else value
    metadata = {
        "format": "pt",
        LORA_METADATA_KEY: json.dumps(packed, sort_keys=True, default=str),
        "likeness_format": ADAPTER_FORMAT,
        "likeness_info": json.dumps(info, sort_keys=True),
    }
    tensors = {k: v.detach().to("cpu", torch.float16).contiguous() for k, v in state_dict.items()}
    return safetensors.torch.save(tensors, metadata=metadata)


def unpack_adapter(data: bytes) -> tuple[dict[str, torch.Tensor], dict, dict]:
    """Inverse of :func:`pack_adapter`: ``(state_dict, lora_metadata, info)``; ``ValueError`` if malformed."""
    try:
        (header_len,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8 : 8 + header_len])
        file_meta = header.get("__metadata__") or {}
        state_dict = safetensors.torch.load(data)
        lora_meta = json.loads(file_meta[LORA_METADATA_KEY])
        info = json.loads(file_meta.get("likeness_info", "{}"))
    except (struct.error, KeyError, ValueError, safetensors.SafetensorError) as e:
        raise ValueError(f"not a Likeness LoRA adapter ({type(e).__name__})") from None
    if not state_dict or not all("lora" in k for k in state_dict):
        raise ValueError("not a Likeness LoRA adapter (no LoRA tensors)")
    return state_dict, lora_meta, info


# --- data ----------------------------------------------------------------------------------------------


def _to_tensor(image: PIL.Image.Image, resolution: int) -> torch.Tensor:
    """Center-crop to a square, resize to ``resolution``, scale to [-1, 1], CHW (the scripts' transforms)."""
    image = image.convert("RGB")
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    image = image.crop((left, top, left + side, top + side))
    image = image.resize((resolution, resolution), PIL.Image.Resampling.BICUBIC)
    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1)


@torch.no_grad()
def _encode_latents(pipe: DiffusionPipeline, images: list[PIL.Image.Image], resolution: int) -> list:
    """VAE latent distributions of each photo, computed once (the SDXL script's ``--cache_latents``)."""
    vae = pipe.vae
    # SDXL's VAE overflows in fp16 (config force_upcast); encode in fp32 there, as the SDXL script does.
    upcast = vae.dtype == torch.float16 and getattr(vae.config, "force_upcast", False)
    dtype = torch.float32 if upcast else vae.dtype
    original = vae.dtype
    if upcast:
        vae.to(dtype=torch.float32)
    try:
        dists = []
        for image in images:
            pixels = _to_tensor(image, resolution).unsqueeze(0).to(vae.device, dtype)
            dists.append(vae.encode(pixels).latent_dist)
        return dists
    finally:
        if upcast:
            vae.to(dtype=original)


def _encode_prompt(
    pipe: DiffusionPipeline, prompt: str, batch: int
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Text embeddings (and SDXL's pooled embeddings) for ``prompt``, via the pipeline's own encoder."""
    out = pipe.encode_prompt(
        prompt=prompt, device=pipe.unet.device, num_images_per_prompt=batch, do_classifier_free_guidance=False
    )
    # SD returns (embeds, negative); SDXL returns (embeds, negative, pooled, negative_pooled).
    return out[0], (out[2] if len(out) == 4 else None)


# --- training ------------------------------------------------------------------------------------------


def _add_lora(module: torch.nn.Module, rank: int, alpha: float, targets: tuple[str, ...]) -> LoraConfig:
    """Inject a fresh training adapter (LoRA B starts at zero, so the model starts unchanged)."""
    config = LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights="gaussian", target_modules=list(targets))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Already found a `peft_config`")
        inject_adapter_in_model(config, module, adapter_name=TRAIN_ADAPTER)
    return config


def adapter_state_dict(module: torch.nn.Module, name: str) -> dict[str, torch.Tensor]:
    """Adapter ``name``'s LoRA tensors in peft's key format (``...to_q.lora_A.weight``)."""
    marker = f".{name}."
    return {
        k.replace(marker, "."): v.detach()
        for k, v in module.state_dict().items()
        if marker in k and (".lora_A." in k or ".lora_B." in k)
    }


def _train_params(module: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The training adapter's parameters, made trainable and fp32 (diffusers' ``cast_training_params``)."""
    params = []
    for name, param in module.named_parameters():
        if f".{TRAIN_ADAPTER}." in name:
            param.data = param.data.float()
            param.requires_grad_(True)
            params.append(param)
        else:
            param.requires_grad_(False)
    return params


def _needs_checkpointing(device: torch.device) -> bool:
    """Gradient checkpointing trades ~30 % speed for memory: on for GPUs under 40 GB (SDXL LoRA at 1024
    needs ~20-25 GB without it), off on big cards (measured on an H100: 9 GiB peak with it) and on CPU."""
    if device.type != "cuda":
        return False
    return torch.cuda.get_device_properties(device).total_memory < 40 * 1024**3


def train_lora(
    pipe: DiffusionPipeline,
    images: list[PIL.Image.Image],
    instance_prompt: str,
    config: TrainConfig,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> TrainResult:
    """Train a LoRA of the person in ``images`` (bound to ``instance_prompt``) and return it as bytes.

    The pipeline is borrowed: afterwards its weights, dtype, modes and ``requires_grad`` flags are as before
    and the training adapter is gone, so generation can follow on the same pipe. Other adapters already
    loaded in it stay loaded but are switched off; activate one explicitly before generating.
    """
    if not images:
        raise ValueError("train_lora needs at least one image")
    started = time.perf_counter()
    device = pipe.unet.device
    weight_dtype = pipe.unet.dtype
    resolution = config.resolution or native_resolution(pipe)
    checkpointing = (
        _needs_checkpointing(device)
        if config.gradient_checkpointing is None
        else config.gradient_checkpointing
    )
    autocast = weight_dtype != torch.float32 and device.type in ("cuda", "cpu")
    scaler = torch.amp.GradScaler(
        device.type, enabled=weight_dtype == torch.float16 and device.type == "cuda"
    )

    components = lora_components(pipe)
    text_encoders = {k: m for k, m in components.items() if k != "unet"} if config.train_text_encoder else {}
    trained = {"unet": pipe.unet, **text_encoders}
    saved_grad = {n: [(p, p.requires_grad) for p in m.parameters()] for n, m in components.items()}
    saved_mode = {n: m.training for n, m in components.items()}
    was_checkpointing = pipe.unet.is_gradient_checkpointing

    generator = torch.Generator(device=device).manual_seed(config.seed)
    # DDPM with the model's own noise schedule and prediction type (epsilon, or v for SD2.x-v).
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    prediction_type = noise_scheduler.config.prediction_type
    scaling = pipe.vae.config.scaling_factor
    shift = getattr(pipe.vae.config, "shift_factor", None) or 0.0
    xl_time_ids = getattr(pipe.unet.config, "addition_embed_type", None) == "text_time"

    losses: list[float] = []
    lora_configs: dict[str, LoraConfig] = {}
    try:
        if progress:
            progress(0.0, "preparing photos")
        latent_dists = _encode_latents(pipe, images, resolution)

        lora_configs["unet"] = _add_lora(pipe.unet, config.rank, config.alpha, config.target_modules)
        for name, encoder in text_encoders.items():
            lora_configs[name] = _add_lora(
                encoder, config.rank, config.alpha, config.text_encoder_target_modules
            )
        set_active_adapter(pipe, TRAIN_ADAPTER)
        for name, module in components.items():
            if name not in trained:
                module.requires_grad_(False)
        params = [p for module in trained.values() for p in _train_params(module)]
        for module in trained.values():
            module.train()
        if checkpointing:
            pipe.unet.enable_gradient_checkpointing()
            for encoder in text_encoders.values():
                encoder.gradient_checkpointing_enable()
        optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=1e-2)

        batch = config.batch_size
        if not text_encoders:
            with torch.no_grad():
                fixed_embeds, fixed_pooled = _encode_prompt(pipe, instance_prompt, batch)
        # SDXL micro-conditioning: original size, crop top-left, target size (all square, uncropped).
        time_ids = torch.tensor(
            [[resolution, resolution, 0, 0, resolution, resolution]] * batch, device=device
        )

        order: list[int] = []
        for step in range(1, config.steps + 1):
            if should_stop and should_stop():
                raise TrainingStopped("training stopped on request")
            picks = []
            for _ in range(batch):
                if not order:
                    order = torch.randperm(
                        len(images), generator=torch.Generator().manual_seed(config.seed + step)
                    )
                    order = order.tolist()
                picks.append(order.pop())

            with torch.no_grad():
                latents = torch.cat([latent_dists[i].sample(generator) for i in picks]).to(weight_dtype)
                latents = (latents - shift) * scaling
                if config.random_flip:
                    flip = torch.rand(batch, generator=generator, device=device) < 0.5
                    latents = torch.where(flip[:, None, None, None], latents.flip(-1), latents)
                noise = torch.randn(latents.shape, generator=generator, device=device, dtype=latents.dtype)
                timesteps = torch.randint(
                    0,
                    noise_scheduler.config.num_train_timesteps,
                    (batch,),
                    generator=generator,
                    device=device,
                )
                noisy = noise_scheduler.add_noise(latents, noise, timesteps)
                if prediction_type == "v_prediction":
                    target = noise_scheduler.get_velocity(latents, noise, timesteps)
                else:
                    target = noise

            with torch.autocast(device.type, dtype=weight_dtype, enabled=autocast):
                if text_encoders:
                    embeds, pooled = _encode_prompt(pipe, instance_prompt, batch)
                else:
                    embeds, pooled = fixed_embeds, fixed_pooled
                extra = (
                    {"added_cond_kwargs": {"text_embeds": pooled, "time_ids": time_ids}}
                    if xl_time_ids
                    else {}
                )
                pred = pipe.unet(noisy, timesteps, embeds, return_dict=False, **extra)[0]
            loss = F.mse_loss(pred.float(), target.float(), reduction="mean")
            if not math.isfinite(loss.item()):
                raise FloatingPointError(f"training loss is not finite at step {step}")

            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
            if progress:
                progress(step / config.steps, f"training step {step}/{config.steps}")

        state_dict = {}
        for name, module in trained.items():
            layers = adapter_state_dict(module, TRAIN_ADAPTER)
            state_dict.update({f"{name}.{k}": v for k, v in layers.items()})
        info = {
            "rank": config.rank,
            "alpha": config.alpha,
            "steps": config.steps,
            "resolution": resolution,
            "config": asdict(config),
        }
        adapter = pack_adapter(state_dict, lora_configs, info)
    finally:
        if checkpointing and not was_checkpointing:
            pipe.unet.disable_gradient_checkpointing()
            for encoder in text_encoders.values():
                encoder.gradient_checkpointing_disable()
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Adapter .* was active which is now deleted")
            delete_adapter(pipe, TRAIN_ADAPTER)
        set_active_adapter(pipe, None)
        for name, module in components.items():
            module.train(saved_mode[name])
            for param, flag in saved_grad[name]:
                param.requires_grad_(flag)
        if device.type == "cuda":
            torch.cuda.empty_cache()

    seconds = time.perf_counter() - started
    if progress:
        progress(1.0, "training done")
    return TrainResult(adapter=adapter, losses=losses, steps=len(losses), seconds=seconds)
