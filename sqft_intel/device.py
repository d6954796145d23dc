"""Every device-specific decision in one place: which device, which precision, how many threads.

Stock PyTorch covers Intel hardware: AMX bf16 on Xeon through CPU autocast, Intel GPUs through the
native `xpu` device. intel-extension-for-pytorch is deliberately not used (archived upstream).
"""

from __future__ import annotations

import contextlib
import functools
import os
from typing import Literal

import torch

from .errors import ConfigError

Precision = Literal["auto", "bf16", "fp32"]


@functools.cache
def cpu_flags() -> frozenset[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_has_amx() -> bool:
    """True when the CPU advertises AMX bf16 tiles (Xeon Sapphire Rapids and later)."""
    return "amx_bf16" in cpu_flags()


def cpu_has_fast_bf16() -> bool:
    """AMX tiles, or AVX512-BF16 dot products: bf16 matmuls beat fp32 (measured 1.6x without AMX)."""
    return cpu_has_amx() or "avx512_bf16" in cpu_flags()


def available_cores() -> int:
    """Cores this process may run on (affinity aware: containers often get fewer than the host)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def set_threads(n: int | None = None) -> int:
    """Set torch's intra-op threads explicitly; oversubscribing small machines costs 10x or more."""
    n = n or available_cores()
    torch.set_num_threads(n)
    return n


def resolve_device(device: str = "auto") -> torch.device:
    """`auto` picks an Intel GPU (`xpu`) when torch sees one, else the CPU."""
    if device == "auto":
        xpu = getattr(torch, "xpu", None)
        return torch.device("xpu" if xpu is not None and xpu.is_available() else "cpu")
    if device not in ("cpu", "xpu") and not device.startswith("xpu:"):
        raise ConfigError(f"`device`={device!r} is not supported; use 'auto', 'cpu' or 'xpu[:N]'.")
    return torch.device(device)


def resolve_precision(precision: Precision, device: torch.device) -> torch.dtype:
    """bf16 autocast where the hardware runs it fast (AMX/AVX512-BF16 CPUs, Intel GPUs), else fp32."""
    if precision == "fp32":
        return torch.float32
    if precision == "bf16":
        return torch.bfloat16
    if precision != "auto":
        raise ConfigError(f"`precision`={precision!r}; use 'auto', 'bf16' or 'fp32'.")
    if device.type == "xpu" or (device.type == "cpu" and cpu_has_fast_bf16()):
        return torch.bfloat16
    return torch.float32


def autocast(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    """Autocast context for `dtype`, or a no-op for fp32 (the frozen weights stay fp32)."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
