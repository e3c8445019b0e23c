"""Device choice: CUDA when present, else CPU; a user's `--device` overrides with a clear error if unusable."""
from __future__ import annotations

import torch

from automedsam.errors import AutomedsamError


def resolve_device(name: str | None = None) -> torch.device:
    """Turn 'auto' / None / 'cpu' / 'cuda' / 'cuda:1' / 'mps' into a usable torch.device."""
    if name is None or name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise AutomedsamError(
            f"Unknown device '{name}'. Use 'auto', 'cpu', 'cuda' or 'cuda:N'."
        ) from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise AutomedsamError(f"Device '{name}' was asked for but CUDA is not available here. Use --device cpu.")
        if device.index is not None and device.index >= torch.cuda.device_count():
            count = torch.cuda.device_count()
            raise AutomedsamError(
                f"Device '{name}' does not exist: this machine has {count} CUDA device(s). Use --device cuda:0 to "
                f"cuda:{count - 1}, or --device cpu."
            )
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise AutomedsamError(f"Device '{name}' was asked for but MPS is not available here. Use --device cpu.")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise AutomedsamError(f"Device '{name}' is not supported. Use 'auto', 'cpu', 'cuda' or 'cuda:N'.")
    return device


def same_device(first: torch.device, second: torch.device) -> bool:
    """Whether two devices are one: 'cuda' without an index is the current CUDA device."""
    def normal(device: torch.device) -> torch.device:
        if device.type == "cuda" and device.index is None and torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        return device
    return normal(first) == normal(second)


def autocast_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    """The autocast dtype for `precision` ('fp32', 'bf16', 'fp16') on `device`, None meaning full precision."""
    if precision == "fp32":
        return None
    if precision == "bf16":
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            return torch.float16
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16 if device.type == "cuda" else torch.bfloat16
    raise AutomedsamError(f"Unknown precision '{precision}'. Use fp32, bf16 or fp16.")
