"""Device choice: CUDA when present, else CPU; a user's `--device` overrides with a clear error if unusable."""
from __future__ import annotations

import functools
from pathlib import Path

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
        return torch.bfloat16 if autocasts_in_bf16(device) else torch.float16
    if precision == "fp16":
        return torch.float16 if device.type == "cuda" else torch.bfloat16
    raise AutomedsamError(f"Unknown precision '{precision}'. Use fp32, bf16 or fp16.")


BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo flags of CPUs with bf16 arithmetic in hardware


def native_bf16(device: torch.device) -> bool:
    """Whether `device` computes bf16 in hardware: a CUDA device with bf16 support, or a CPU with AVX512-BF16 or
    AMX-BF16. Elsewhere bf16 is emulated, slower than fp32, and never worth choosing."""
    if device.type == "cuda":  # compute capability 8 (Ampere) on; torch's is_bf16_supported() counts emulation too
        return torch.cuda.is_available() and torch.cuda.get_device_capability(device)[0] >= 8
    if device.type == "cpu":
        return any(flag in cpu_flags() for flag in BF16_CPU_FLAGS)
    return False


def autocasts_in_bf16(device: torch.device) -> bool:
    """Whether bf16 autocast on `device` computes in bf16 (natively, or emulated on a CPU): not on a CUDA device
    without bf16 arithmetic, where `autocast_dtype` takes fp16 instead (training, with a gradient scaler)."""
    return device.type != "cuda" or native_bf16(device)


def bf16_hardware(device: torch.device) -> str:
    """What makes `device` compute bf16 natively, in words (for the record in plans.json)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    flags = sorted(flag for flag in BF16_CPU_FLAGS if flag in cpu_flags())
    return f"CPU with {', '.join(flags)}" if flags else "CPU without bf16 arithmetic"


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo (none where that file does not exist, e.g. macOS)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()
