"""AnimateDiff motion adapters, and a motion UNet that shares the resident UNet's layers.

``load_motion_adapter`` reads the adapter named by ``LIKENESS_ENGINE_MOTION_ADAPTER`` (``auto``: the model
family's default, a Hugging Face id from the local cache, a local folder, or ``tiny``: random weights built
offline, shaped for the resident UNet, as diffusers' own tests do).

``motion_unet`` builds a ``UNetMotionModel`` whose spatial layers *are* the resident UNet's modules (not
copies): no second copy of the UNet in memory, and the users' LoRA layers injected into the resident UNet
(adapter slots, see engine/ml/generate.py) act in the video UNet too. Only the motion modules are new;
they are the adapter's own modules.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
from diffusers import MotionAdapter, UNet2DConditionModel, UNetMotionModel

# What ``auto`` means, by model family (the diffusers-format AnimateDiff adapters).
DEFAULT_ADAPTERS = {
    "sd15": "guoyww/animatediff-motion-adapter-v1-5-3",
    "sdxl": "guoyww/animatediff-motion-adapter-sdxl-beta",
}


class MotionAdapterError(Exception):
    """The configured motion adapter cannot be used. ``str(e)`` is one line that says what to do."""


def family(unet: UNet2DConditionModel) -> str:
    """``sdxl`` for SDXL-layout UNets (text_time conditioning), ``sd15`` otherwise; ``tiny`` for test shapes."""
    if unet.config.block_out_channels[0] < 320:
        return "tiny"
    return "sdxl" if unet.config.addition_embed_type == "text_time" else "sd15"


def tiny_motion_adapter(unet: UNet2DConditionModel, seed: int = 0) -> MotionAdapter:
    """A motion adapter with random weights that fits ``unet``: diffusers' test shapes for the tiny UNets,
    the released AnimateDiff shapes (8 heads, 32 groups, 32 frames) for real ones. Built offline."""
    config = unet.config
    channels = tuple(config.block_out_channels)
    real = channels[0] >= 320
    layers = config.layers_per_block
    torch.manual_seed(seed)
    with torch.device(unet.device):
        adapter = MotionAdapter(
            block_out_channels=channels,
            motion_layers_per_block=layers if isinstance(layers, int) else tuple(layers),
            motion_norm_num_groups=32 if real else 2,
            motion_num_attention_heads=8 if real else 4,
            motion_max_seq_length=32,
            use_motion_mid_block=real and config.addition_embed_type != "text_time",
        )
    return adapter.to(dtype=unet.dtype).eval().requires_grad_(False)


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def load_motion_adapter(source: str, unet: UNet2DConditionModel) -> MotionAdapter:
    """The motion adapter ``source`` names, on the UNet's device and dtype, frozen and in eval mode."""
    kind = family(unet)
    if source == "off":
        raise MotionAdapterError("video presets are off (LIKENESS_ENGINE_MOTION_ADAPTER=off)")
    if source == "auto":
        source = "tiny" if kind == "tiny" else DEFAULT_ADAPTERS[kind]
    if source == "tiny":
        return tiny_motion_adapter(unet)
    path = Path(source).expanduser()
    if source.startswith((".", "/", "~")) and not path.is_dir():
        raise MotionAdapterError(f"motion adapter folder {source} does not exist")
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*torch_dtype.*", category=FutureWarning)
            adapter = MotionAdapter.from_pretrained(
                str(path) if path.is_dir() else source,
                torch_dtype=unet.dtype,
                local_files_only=_offline() or path.is_dir(),
            )
    except Exception as e:
        hint = f"hf download {source}" if not path.is_dir() else "check the folder"
        raise MotionAdapterError(
            f"cannot load motion adapter {source!r} ({type(e).__name__}); {hint}, "
            "or set LIKENESS_ENGINE_MOTION_ADAPTER to a local folder"
        ) from None
    check_fits(adapter, unet)
    return adapter.to(unet.device).eval().requires_grad_(False)


def check_fits(adapter: MotionAdapter, unet: UNet2DConditionModel) -> None:
    """Raise ``MotionAdapterError`` unless ``adapter`` was made for ``unet``'s family and block layout."""
    if tuple(adapter.config.block_out_channels) != tuple(unet.config.block_out_channels):
        raise MotionAdapterError(
            f"motion adapter is for a UNet with channels {tuple(adapter.config.block_out_channels)}, "
            f"the model has {tuple(unet.config.block_out_channels)}; pick the adapter for this model family"
        )


def motion_unet(unet: UNet2DConditionModel, adapter: MotionAdapter) -> UNetMotionModel:
    """A ``UNetMotionModel`` made of ``unet``'s own modules plus ``adapter``'s motion modules (shared, not
    copied). LoRA layers in ``unet`` (now or injected later) act in it as well."""
    check_fits(adapter, unet)
    with torch.device("meta"):  # the skeleton only: every parameter is replaced by a shared module below
        model = UNetMotionModel.from_unet2d(unet, adapter, load_weights=False)
    for name, _ in list(model.named_children()):
        if name in ("down_blocks", "up_blocks"):
            for block, source, motion in zip(
                getattr(model, name), getattr(unet, name), getattr(adapter, name), strict=True
            ):
                _share_block(block, source, motion)
        elif name == "mid_block" and hasattr(model.mid_block, "motion_modules"):
            _share_block(model.mid_block, unet.mid_block, adapter.mid_block)
        elif isinstance(getattr(unet, name, None), torch.nn.Module):
            setattr(model, name, getattr(unet, name))
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise MotionAdapterError(f"motion UNet has {len(left)} unshared tensors (first: {left[0]})")
    return model.eval()


def _share_block(block: torch.nn.Module, source: torch.nn.Module, motion: torch.nn.Module) -> None:
    for name, _ in list(block.named_children()):
        setattr(block, name, motion.motion_modules if name == "motion_modules" else getattr(source, name))
