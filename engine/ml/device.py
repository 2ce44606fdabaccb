"""Pick the torch device and dtype the engine runs on."""

from __future__ import annotations

import torch

from engine.errors import StartupError

_DTYPES = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "fp16": torch.float16,
    "float16": torch.float16,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
}
_FALLBACK = "set LIKENESS_ENGINE_DEVICE=auto (or cpu) to run where PyTorch can"


class DeviceError(StartupError):
    """`LIKENESS_ENGINE_DEVICE` / `LIKENESS_ENGINE_DTYPE` name something this machine cannot run on.

    ``str(e)`` is one complete line that names the setting and the fix.
    """


def pick_device(device: str = "auto", dtype: str = "auto") -> tuple[torch.device, torch.dtype]:
    """Return ``(device, dtype)``.

    ``auto`` picks CUDA (bf16, or fp16 on cards without bf16), then Apple MPS (fp16), then CPU (fp32).
    Explicit values (``"cuda:1"``, ``"cpu"``, ``"fp16"`` ...) override the choice; one this machine
    cannot honour raises `DeviceError`.
    """
    if device == "auto":
        if torch.cuda.is_available():
            device = "cuda"
        elif torch.backends.mps.is_available():
            device = "mps"
        else:
            device = "cpu"
    dev = _checked_device(device)

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
            raise DeviceError(
                f"LIKENESS_ENGINE_DTYPE={dtype} is not a dtype: use auto, float32, float16 or bfloat16."
            ) from None
    return dev, chosen


def _checked_device(device: str) -> torch.device:
    """`torch.device(device)`, after checking this machine has it."""
    setting = f"LIKENESS_ENGINE_DEVICE={device}"
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise DeviceError(f"{setting} is not a device: use auto, cpu, cuda, cuda:N or mps.") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            if torch.version.cuda is None:
                raise DeviceError(
                    f"{setting}, but this PyTorch ({torch.__version__}) is a CPU-only build: install the "
                    f"CUDA build (README, Quick start) or {_FALLBACK}."
                )
            raise DeviceError(
                f"{setting}, but PyTorch sees no CUDA GPU (check `nvidia-smi` and CUDA_VISIBLE_DEVICES), "
                f"or {_FALLBACK}."
            )
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise DeviceError(
                f"{setting}, but only {count} CUDA GPU(s) are visible (cuda:0 to cuda:{count - 1}): "
                f"pick one of them, or {_FALLBACK}."
            )
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise DeviceError(f"{setting}, but Apple's MPS is not available on this machine: {_FALLBACK}.")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise DeviceError(f"{setting} is not supported: use auto, cpu, cuda, cuda:N or mps.")
    return dev
