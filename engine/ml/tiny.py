"""Pipelines built offline from configs written here: tiny ones for tests, real SD1.5/SDXL shapes for benches.

Nothing is downloaded. The tokenizer is a byte-level CLIP BPE with no merges (every byte is a token), so
any text can be encoded; it is only meant for tests and benchmarks, never for real images. A byte per token
makes a prompt about four times longer than real CLIP's BPE does, so the tiny text encoders read
`TINY_CONTEXT` tokens instead of CLIP's 77: a preset that fits real CLIP fits the tiny model too, and CLIP's
"truncated to 77 tokens" warning never fires for a prompt that would not be cut on a real model.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    DiffusionPipeline,
    DPMSolverMultistepScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

ARCHS = ("tiny", "tiny-sdxl", "sd15", "sdxl")
CLIP_CONTEXT = 77  # real CLIP text encoders: tokens per prompt, start and end included
TINY_CONTEXT = 384  # byte tokens; 77 real BPE tokens are about 350 characters of English

# Noise schedule shared by SD1.x and SDXL (their scheduler_config.json files).
_SCHEDULE = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon",
    "steps_offset": 1,
}

# Tiny shapes, as in diffusers' tests (tests/pipelines/stable_diffusion/test_stable_diffusion.py and
# test_stable_diffusion_xl.py, get_dummy_components).
_TINY_UNET = {
    "block_out_channels": (32, 64),
    "layers_per_block": 2,
    "sample_size": 32,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
    "cross_attention_dim": 32,
    "norm_num_groups": 32,
}
_TINY_XL_UNET = {
    **_TINY_UNET,
    "attention_head_dim": (2, 4),
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 8,
    "transformer_layers_per_block": (1, 2),
    "projection_class_embeddings_input_dim": 80,  # 6 time ids * 8 + pooled text (32)
    "cross_attention_dim": 64,  # both text encoders' hidden states, concatenated
}
_TINY_VAE = {
    "block_out_channels": (32, 64),
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ("DownEncoderBlock2D", "DownEncoderBlock2D"),
    "up_block_types": ("UpDecoderBlock2D", "UpDecoderBlock2D"),
    "latent_channels": 4,
    "sample_size": 64,
}
_TINY_TEXT = {
    "hidden_size": 32,
    "intermediate_size": 37,
    "layer_norm_eps": 1e-05,
    "num_attention_heads": 4,
    "num_hidden_layers": 5,
    "projection_dim": 32,
    "hidden_act": "gelu",
}

# Real shapes, from the unet/, vae/, text_encoder*/ config.json files of
# stable-diffusion-v1-5/stable-diffusion-v1-5 and stabilityai/stable-diffusion-xl-base-1.0.
_SD15_UNET = {
    "block_out_channels": (320, 640, 1280, 1280),
    "layers_per_block": 2,
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": (
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "DownBlock2D",
    ),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
    "norm_num_groups": 32,
}
_SDXL_UNET = {
    "block_out_channels": (320, 640, 1280),
    "layers_per_block": 2,
    "sample_size": 128,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    "cross_attention_dim": 2048,
    "attention_head_dim": (5, 10, 20),
    "transformer_layers_per_block": (1, 2, 10),
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816,
    "norm_num_groups": 32,
}
_REAL_VAE = {
    "block_out_channels": (128, 256, 512, 512),
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "latent_channels": 4,
    "layers_per_block": 2,
}
_CLIP_L = {
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "projection_dim": 768,
    "hidden_act": "quick_gelu",
}
_CLIP_BIGG = {
    "hidden_size": 1280,
    "intermediate_size": 5120,
    "num_attention_heads": 20,
    "num_hidden_layers": 32,
    "projection_dim": 1280,
    "hidden_act": "gelu",
}


def _bytes_to_unicode() -> list[str]:
    """The 256 printable stand-ins GPT-2/CLIP byte-level BPE uses for raw bytes."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs = bs[:]
    extra = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + extra)
            extra += 1
    return [chr(c) for c in cs]


def byte_tokenizer(context: int = CLIP_CONTEXT) -> CLIPTokenizer:
    """A 514-token byte-level CLIP tokenizer (ids 512/513 are start/end of text) reading `context` tokens,
    built offline."""
    chars = _bytes_to_unicode()
    vocab = [*chars, *(c + "</w>" for c in chars), "<|startoftext|>", "<|endoftext|>"]
    with tempfile.TemporaryDirectory(prefix="likeness-tok-") as tmp:
        vocab_path, merges_path = Path(tmp, "vocab.json"), Path(tmp, "merges.txt")
        vocab_path.write_text(json.dumps({tok: i for i, tok in enumerate(vocab)}), encoding="utf-8")
        merges_path.write_text("#version: 0.2\n", encoding="utf-8")
        # Paths positional: the keyword form silently builds a 3-token vocab on transformers 5.
        tokenizer = CLIPTokenizer(str(vocab_path), str(merges_path), model_max_length=context)
    if len(tokenizer) != len(vocab):
        raise RuntimeError(f"byte tokenizer has {len(tokenizer)} tokens, expected {len(vocab)}")
    return tokenizer


def _text_config(shape: dict, vocab_size: int, context: int) -> CLIPTextConfig:
    return CLIPTextConfig(
        **shape,
        vocab_size=vocab_size,
        max_position_embeddings=context,
        bos_token_id=512,
        eos_token_id=513,
        pad_token_id=513,
    )


def build_tiny_pipeline(
    arch: str = "tiny", random_weights: bool = True, seed: int = 0, device: str | torch.device = "cpu"
) -> DiffusionPipeline:
    """Build a pipeline offline with random weights in fp32, deterministic for a given ``seed`` and device.

    Weights are initialised directly on ``device`` (much faster for the real shapes on a GPU).

    ``tiny`` / ``tiny-sdxl`` are the few-MB shapes diffusers uses in its own tests (SD and SDXL layouts);
    ``sd15`` / ``sdxl`` are the real architectures (about 1 GB / 3.5 GB of fp32 weights) for benchmarks.
    """
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; choose one of {', '.join(ARCHS)}")
    if not random_weights:
        raise ValueError(
            "build_tiny_pipeline only builds random weights; load real weights with load_pipeline"
        )
    xl = arch in ("tiny-sdxl", "sdxl")
    tiny = arch.startswith("tiny")
    unet_shape = {"tiny": _TINY_UNET, "tiny-sdxl": _TINY_XL_UNET, "sd15": _SD15_UNET, "sdxl": _SDXL_UNET}[
        arch
    ]
    vae_shape = _TINY_VAE if tiny else {**_REAL_VAE, "sample_size": 1024 if xl else 512}
    vocab_size = 1000 if tiny else 49408

    with torch.device(device):
        return _build(xl, tiny, unet_shape, vae_shape, vocab_size, seed)


def _build(
    xl: bool, tiny: bool, unet_shape: dict, vae_shape: dict, vocab_size: int, seed: int
) -> DiffusionPipeline:
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**unet_shape)
    torch.manual_seed(seed)
    vae = AutoencoderKL(**vae_shape, scaling_factor=0.13025 if xl else 0.18215, force_upcast=xl and not tiny)
    context = TINY_CONTEXT if tiny else CLIP_CONTEXT
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(_text_config(_TINY_TEXT if tiny else _CLIP_L, vocab_size, context))
    scheduler = DPMSolverMultistepScheduler(**_SCHEDULE)
    tokenizer = byte_tokenizer(context)

    if not xl:
        pipe = StableDiffusionPipeline(
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            unet=unet,
            scheduler=scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    else:
        torch.manual_seed(seed + 1)
        text_encoder_2 = CLIPTextModelWithProjection(
            _text_config(_TINY_TEXT if tiny else _CLIP_BIGG, vocab_size, context)
        )
        pipe = StableDiffusionXLPipeline(
            vae=vae,
            text_encoder=text_encoder,
            text_encoder_2=text_encoder_2,
            tokenizer=tokenizer,
            tokenizer_2=byte_tokenizer(context),
            unet=unet,
            scheduler=scheduler,
            force_zeros_for_empty_prompt=True,
            add_watermarker=False,
        )
    for module in pipe.components.values():
        if isinstance(module, torch.nn.Module):
            module.eval()
    pipe.set_progress_bar_config(disable=True)
    return pipe
