"""Pick the torch device and dtype the engine runs on."""

from __future__ import annotations

import torch

_DTYPES = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "fp16": torch.float16,
    "float16": torch.float16,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
}


def pick_device(device: str = "auto", dtype: str = "auto") -> tuple[torch.device, torch.dtype]:
    """Return ``(device, dtype)``.

    ``auto`` picks CUDA (bf16, or fp16 on cards without bf16), then Apple MPS (fp16), then CPU (fp32).
    Explicit values (``"cuda:1"``, ``"cpu"``, ``"fp16"`` ...) override the choice.
    """
    if device == "auto":
        if torch.cuda.is_available():
            device = "cuda"
        elif torch.backends.mps.is_available():
            device = "mps"
        else:
            device = "cpu"
    dev = torch.device(device)

    if dtype == "auto":
        if dev.type == "cuda":
            chosen = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        elif dev.type == "mps":
            chosen = torch.float16
        else:
            chosen = torch.float32
    else:
        try:
            chosen = _DTYPES[dtype.lower()]
        except KeyError:
            raise ValueError(f"unknown dtype {dtype!r}; use auto, fp32, fp16 or bf16") from None
    return dev, chosen
