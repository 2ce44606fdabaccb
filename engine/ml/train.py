"""DreamBooth-style LoRA training on the resident pipeline, entirely in memory.

The loop follows diffusers' examples/dreambooth/train_dreambooth_lora.py and train_dreambooth_lora_sdxl.py
(prior preservation off) and reads in the same order: borrow the pipeline's components (:func:`_borrowed`),
encode the photos and the prompt once (:class:`_Photos`, :class:`_Prompt`), then per step sample a batch,
add noise at a random timestep and compute the target (:class:`_NoiseTarget`), and take one optimisation
step (:func:`_optimisation_step`) that teaches LoRA layers on the UNet's attention projections to predict
it. The photos never touch the disk and the adapter comes back as safetensors bytes.
"""

from __future__ import annotations

import contextlib
import json
import math
import struct
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass

import numpy as np
import PIL.Image
import safetensors.torch
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, DiffusionPipeline
from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0
from peft import LoraConfig, inject_adapter_in_model

from engine.ml.pipeline import delete_adapter, lora_components, native_resolution, set_active_adapter

TRAIN_ADAPTER = "likeness_training"
ADAPTER_FORMAT = "likeness-lora-1"
# diffusers reads LoRA hyper-parameters (rank, lora_alpha, targets) from this safetensors metadata key.
LORA_METADATA_KEY = "lora_adapter_metadata"
# What the UNet can be taught to predict: the noise (SD1.x, SDXL) or the velocity (SD2.x-v).
PREDICTION_TYPES = ("epsilon", "v_prediction")
ATTENTION = ("sdpa", "eager")
MIXED_PRECISION = ("auto", "no", "bf16", "fp16")

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
    ``max_grad_norm=1.0`` and the AdamW settings are the scripts' defaults.

    The last group are speed levers (``bench/train.py`` measures each); their defaults are the fast,
    equivalent choices, and the other values exist so that the bench can measure what they save.
    """

    steps: int = 500
    rank: int = 16
    alpha: float = 16.0
    learning_rate: float = 1e-4
    resolution: int = 0  # 0 = the model's native resolution (512 SD1.5, 768 SD2.x-v, 1024 SDXL)
    batch_size: int = 1
    train_text_encoder: bool = False  # the scripts' default; the UNet alone learns a face well
    seed: int = 0
    gradient_checkpointing: bool | None = None  # None = on for CUDA cards under 40 GB
    max_grad_norm: float = 1.0
    random_flip: bool = False  # faces are not symmetric; the scripts also default to no flip
    target_modules: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")
    text_encoder_target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "out_proj")
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_weight_decay: float = 1e-2
    adam_epsilon: float = 1e-8
    # Speed levers.
    cache_latents: bool = True  # encode each photo with the VAE once per job (False: every step)
    cache_text: bool = True  # encode the prompt once per job (False: every step); moot with a text LoRA
    attention: str = "sdpa"  # "sdpa" (torch's fused attention) or "eager" (diffusers' AttnProcessor)
    mixed_precision: str = "auto"  # auto = autocast to the weights' dtype when it is bf16/fp16; no/bf16/fp16
    fused_adamw: bool | None = None  # None = torch's fused AdamW on CUDA, the default kernel elsewhere

    def __post_init__(self) -> None:
        if self.steps < 1 or self.rank < 1 or self.batch_size < 1:
            raise ValueError("steps, rank and batch_size must be at least 1")
        if self.learning_rate <= 0 or self.alpha <= 0:
            raise ValueError("learning_rate and alpha must be positive")
        if self.resolution < 0 or self.resolution % 8:
            raise ValueError("resolution must be 0 (native) or a positive multiple of 8")
        if self.attention not in ATTENTION:
            raise ValueError(f"attention must be one of {', '.join(ATTENTION)}")
        if self.mixed_precision not in MIXED_PRECISION:
            raise ValueError(f"mixed_precision must be one of {', '.join(MIXED_PRECISION)}")


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


# --- data: photos and prompt, encoded once --------------------------------------------------------------


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
def _encode_pixels(pipe: DiffusionPipeline, pixels: list[torch.Tensor]) -> list:
    """VAE latent distribution of each CHW pixel tensor."""
    vae = pipe.vae
    # SDXL's VAE overflows in fp16 (config force_upcast); encode in fp32 there, as the SDXL script does.
    upcast = vae.dtype == torch.float16 and getattr(vae.config, "force_upcast", False)
    dtype = torch.float32 if upcast else vae.dtype
    original = vae.dtype
    if upcast:
        vae.to(dtype=torch.float32)
    try:
        return [vae.encode(p.unsqueeze(0).to(vae.device, dtype)).latent_dist for p in pixels]
    finally:
        if upcast:
            vae.to(dtype=original)


class _Photos:
    """The training photos as a source of latent batches.

    With ``cache_latents`` each photo (and, with ``random_flip``, its mirror image) goes through the VAE
    once, here, and a step only samples from the stored distributions, as the SDXL script's
    ``--cache_latents`` does; without it every step encodes its photos again (the scripts' default, kept
    to measure the difference). Mirrors are encoded from flipped pixels, not flipped latents, so they are
    exactly what the VAE makes of a mirrored photo.
    """

    def __init__(
        self, pipe: DiffusionPipeline, images: list[PIL.Image.Image], resolution: int, config: TrainConfig
    ):
        self.pipe = pipe
        self.count = len(images)
        self.random_flip = config.random_flip
        pixels = [_to_tensor(image, resolution) for image in images]
        if config.random_flip:
            pixels += [p.flip(-1) for p in pixels]  # index i + count is photo i mirrored
        self.pixels = None if config.cache_latents else pixels
        self.dists = _encode_pixels(pipe, pixels) if config.cache_latents else None
        self.scaling = pipe.vae.config.scaling_factor
        self.shift = getattr(pipe.vae.config, "shift_factor", None) or 0.0

    @torch.no_grad()
    def latents(self, picks: list[int], generator: torch.Generator, dtype: torch.dtype) -> torch.Tensor:
        """Scaled latents of the photos ``picks`` (each mirrored with probability 1/2 under ``random_flip``)."""
        if self.random_flip:
            device = self.pipe.unet.device
            flips = torch.rand(len(picks), generator=generator, device=device) < 0.5
            picks = [i + self.count * int(f) for i, f in zip(picks, flips.tolist(), strict=True)]
        if self.dists is not None:
            dists = [self.dists[i] for i in picks]
        else:
            dists = _encode_pixels(self.pipe, [self.pixels[i] for i in picks])
        latents = torch.cat([d.sample(generator) for d in dists]).to(dtype)
        return (latents - self.shift) * self.scaling


class _PhotoOrder:
    """Which photos each batch uses: every photo once per epoch, in a freshly seeded random order."""

    def __init__(self, count: int, seed: int):
        self.count, self.seed = count, seed
        self.order: list[int] = []

    def take(self, batch: int, step: int) -> list[int]:
        picks = []
        for _ in range(batch):
            if not self.order:
                shuffle = torch.Generator().manual_seed(self.seed + step)
                self.order = torch.randperm(self.count, generator=shuffle).tolist()
            picks.append(self.order.pop())
        return picks


class _Prompt:
    """The instance prompt as UNet conditioning: text embeddings, and for SDXL pooled embeddings + time ids.

    Encoded once when the text encoders are frozen (the scripts' ``--pre_compute_text_embeddings``),
    otherwise every step, with gradients when a text-encoder LoRA is trained.
    """

    def __init__(
        self, pipe: DiffusionPipeline, prompt: str, batch: int, resolution: int, config: TrainConfig
    ):
        self.pipe, self.prompt, self.batch = pipe, prompt, batch
        self.with_grad = config.train_text_encoder
        self.xl = getattr(pipe.unet.config, "addition_embed_type", None) == "text_time"
        # SDXL micro-conditioning: original size, crop top-left, target size (all square, uncropped).
        self.time_ids = torch.tensor(
            [[resolution, resolution, 0, 0, resolution, resolution]] * batch, device=pipe.unet.device
        )
        self.cached = None
        if config.cache_text and not config.train_text_encoder:
            with torch.no_grad():
                self.cached = self._encode()

    def _encode(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        out = self.pipe.encode_prompt(
            prompt=self.prompt,
            device=self.pipe.unet.device,
            num_images_per_prompt=self.batch,
            do_classifier_free_guidance=False,
        )
        # SD returns (embeds, negative); SDXL returns (embeds, negative, pooled, negative_pooled).
        return out[0], (out[2] if len(out) == 4 else None)

    def unet_inputs(self) -> tuple[torch.Tensor, dict]:
        """``(encoder_hidden_states, extra UNet kwargs)`` for one step."""
        if self.cached is not None:
            embeds, pooled = self.cached
        else:
            with torch.set_grad_enabled(self.with_grad):
                embeds, pooled = self._encode()
        if not self.xl:
            return embeds, {}
        return embeds, {"added_cond_kwargs": {"text_embeds": pooled, "time_ids": self.time_ids}}


# --- noise and target ------------------------------------------------------------------------------------


class _NoiseTarget:
    """DDPM forward process with the model's own noise schedule, and what the UNet must predict.

    Raises ``ValueError`` for a prediction type training does not know (the diffusers scripts do the same),
    before anything in the pipeline is touched.
    """

    def __init__(self, pipe: DiffusionPipeline):
        self.scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
        self.prediction_type = self.scheduler.config.prediction_type
        if self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(
                f"cannot train a LoRA for this model: its scheduler's prediction_type is "
                f"{self.prediction_type!r}; supported: {', '.join(PREDICTION_TYPES)} (SD 1.x/2.x, SDXL)"
            )

    @torch.no_grad()
    def noisy(
        self, latents: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(noisy latents, timesteps, target)`` for a batch of clean latents."""
        noise = torch.randn(latents.shape, generator=generator, device=latents.device, dtype=latents.dtype)
        timesteps = torch.randint(
            0,
            self.scheduler.config.num_train_timesteps,
            (latents.shape[0],),
            generator=generator,
            device=latents.device,
        )
        noisy = self.scheduler.add_noise(latents, noise, timesteps)
        if self.prediction_type == "v_prediction":
            return noisy, timesteps, self.scheduler.get_velocity(latents, noise, timesteps)
        return noisy, timesteps, noise


# --- borrowing the pipeline ------------------------------------------------------------------------------


def _add_lora(
    module: torch.nn.Module, rank: int, alpha: float, targets: tuple[str, ...], seed: int
) -> LoraConfig:
    """Inject a fresh training adapter (LoRA B starts at zero, so the model starts unchanged).

    LoRA A is drawn from the CPU generator seeded with ``seed`` (peft initialises on the CPU, then moves
    the layers), so a run is reproducible and the caller's global random state is left alone.
    """
    config = LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights="gaussian", target_modules=list(targets))
    with warnings.catch_warnings(), torch.random.fork_rng(devices=[]):
        warnings.filterwarnings("ignore", message="Already found a `peft_config`")
        torch.manual_seed(seed)
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


@dataclass
class _Trainable:
    """What :func:`_borrowed` lends: the modules being trained, their LoRA parameters and configs."""

    modules: dict[str, torch.nn.Module]
    params: list[torch.nn.Parameter]
    lora_configs: dict[str, LoraConfig]


@contextlib.contextmanager
def _borrowed(pipe: DiffusionPipeline, config: TrainConfig) -> Iterator[_Trainable]:
    """Add the training adapter to the pipe and make only its layers trainable; afterwards put back the
    pipe exactly as it was (adapter deleted; grad flags, train/eval modes, checkpointing and attention
    processors restored; other adapters switched off)."""
    components = lora_components(pipe)
    names = [n for n in components if n == "unet" or config.train_text_encoder]
    modules = {n: components[n] for n in names}
    saved_grad = {n: [(p, p.requires_grad) for p in m.parameters()] for n, m in components.items()}
    saved_mode = {n: m.training for n, m in components.items()}
    saved_processors = pipe.unet.attn_processors
    was_checkpointing = pipe.unet.is_gradient_checkpointing
    device = pipe.unet.device
    checkpointing = config.gradient_checkpointing
    if checkpointing is None:
        checkpointing = _needs_checkpointing(device)
    encoders = [m for n, m in modules.items() if n != "unet"]
    try:
        lora_configs = {
            n: _add_lora(
                m,
                config.rank,
                config.alpha,
                config.target_modules if n == "unet" else config.text_encoder_target_modules,
                config.seed,
            )
            for n, m in modules.items()
        }
        set_active_adapter(pipe, TRAIN_ADAPTER)
        for name, module in components.items():
            if name not in modules:
                module.requires_grad_(False)
        params = [p for module in modules.values() for p in _train_params(module)]
        for module in modules.values():
            module.train()
        if checkpointing:
            pipe.unet.enable_gradient_checkpointing()
            for encoder in encoders:
                encoder.gradient_checkpointing_enable()
        pipe.unet.set_attn_processor(AttnProcessor2_0() if config.attention == "sdpa" else AttnProcessor())
        yield _Trainable(modules, params, lora_configs)
    finally:
        pipe.unet.set_attn_processor(saved_processors)
        if checkpointing and not was_checkpointing:
            pipe.unet.disable_gradient_checkpointing()
            for encoder in encoders:
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


# --- one optimisation step -------------------------------------------------------------------------------


def _autocast_dtype(
    config: TrainConfig, weight_dtype: torch.dtype, device: torch.device
) -> torch.dtype | None:
    """The dtype the UNet runs in under autocast, or None for no autocast.

    ``auto`` follows the weights: bf16/fp16 weights run under autocast to that dtype (the scripts'
    ``--mixed_precision``) while the LoRA parameters stay fp32; fp32 weights run in fp32.
    """
    if config.mixed_precision == "auto":
        half = weight_dtype in (torch.bfloat16, torch.float16) and device.type in ("cuda", "cpu")
        return weight_dtype if half else None
    return {"no": None, "bf16": torch.bfloat16, "fp16": torch.float16}[config.mixed_precision]


def _optimizer(
    params: list[torch.nn.Parameter], config: TrainConfig, device: torch.device
) -> torch.optim.AdamW:
    """AdamW with the scripts' settings; torch's fused kernel (one launch for all tensors) on CUDA."""
    fused = device.type == "cuda" if config.fused_adamw is None else config.fused_adamw
    return torch.optim.AdamW(
        params,
        lr=config.learning_rate,
        betas=(config.adam_beta1, config.adam_beta2),
        weight_decay=config.adam_weight_decay,
        eps=config.adam_epsilon,
        fused=True if fused else None,
    )


def _optimisation_step(
    loss: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    params: list[torch.nn.Parameter],
    max_grad_norm: float,
) -> None:
    """Backward, clip the gradient norm, step, zero the gradients (a no-op scaler unless fp16 on CUDA)."""
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)


def _export(trainable: _Trainable, config: TrainConfig, resolution: int) -> bytes:
    """The trained LoRA layers of every trained module as adapter bytes, prefixed by component name."""
    state_dict = {}
    for name, module in trainable.modules.items():
        layers = adapter_state_dict(module, TRAIN_ADAPTER)
        state_dict.update({f"{name}.{k}": v for k, v in layers.items()})
    info = {
        "rank": config.rank,
        "alpha": config.alpha,
        "steps": config.steps,
        "resolution": resolution,
        "config": asdict(config),
    }
    return pack_adapter(state_dict, trainable.lora_configs, info)


# --- the loop --------------------------------------------------------------------------------------------


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
    target = _NoiseTarget(pipe)  # the model's noise schedule and prediction type (raises if unknown)
    device, weight_dtype = pipe.unet.device, pipe.unet.dtype
    resolution = config.resolution or native_resolution(pipe)
    autocast = _autocast_dtype(config, weight_dtype, device)
    scaler = torch.amp.GradScaler(device.type, enabled=autocast == torch.float16 and device.type == "cuda")
    generator = torch.Generator(device=device).manual_seed(config.seed)
    order = _PhotoOrder(len(images), config.seed)

    losses: list[float] = []
    if progress:
        progress(0.0, "preparing photos")
    photos = _Photos(pipe, images, resolution, config)
    with _borrowed(pipe, config) as trainable:
        prompt = _Prompt(pipe, instance_prompt, config.batch_size, resolution, config)
        optimizer = _optimizer(trainable.params, config, device)
        for step in range(1, config.steps + 1):
            if should_stop and should_stop():
                raise TrainingStopped("training stopped on request")
            latents = photos.latents(order.take(config.batch_size, step), generator, weight_dtype)
            noisy, timesteps, wanted = target.noisy(latents, generator)
            with torch.autocast(device.type, dtype=autocast or torch.float32, enabled=autocast is not None):
                embeds, extra = prompt.unet_inputs()
                pred = pipe.unet(noisy, timesteps, embeds, return_dict=False, **extra)[0]
            loss = F.mse_loss(pred.float(), wanted.float(), reduction="mean")
            value = loss.item()  # the one host sync per step
            if not math.isfinite(value):
                raise FloatingPointError(f"training loss is not finite at step {step}")
            _optimisation_step(loss, optimizer, scaler, trainable.params, config.max_grad_norm)
            losses.append(value)
            if progress:
                progress(step / config.steps, f"training step {step}/{config.steps}")
        adapter = _export(trainable, config, resolution)

    seconds = time.perf_counter() - started
    if progress:
        progress(1.0, "training done")
    return TrainResult(adapter=adapter, losses=losses, steps=len(losses), seconds=seconds)
