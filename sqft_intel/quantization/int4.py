"""The INT4 grid and its packing: pure torch, no model code.

Asymmetric, per group of `g` input channels: min <- min(min, 0), max <- max(max, 0) so 0 lies in
every group's range; σ = (max - min)/15 (stored fp16), z = round(-min/σ) ∈ [0, 15] an integer;
q = clamp(round(w/σ) + z, 0, 15), Q(w) = σ(q - z). Because z is an integer, w = 0 maps to q = z and
back to exactly 0: zeros survive quantization. Symmetric: z = 8, σ = 2·absmax/15.
"""

from __future__ import annotations

import torch
from torch import Tensor

QMAX = 15
FP16_TINY = 2.0**-14  # smallest normal fp16: scales are stored in fp16


def resolve_group(in_features: int, group_size: int) -> int:
    return in_features if group_size == -1 else group_size


def expand(t: Tensor, group: int) -> Tensor:
    """(out, in/g) -> (out, in): repeat each group's value over its `group` columns."""
    return t.repeat_interleave(group, dim=1)


def group_params(w: Tensor, group: int, *, sym: bool) -> tuple[Tensor, Tensor]:
    """Scales σ (out, in/g) fp16 and integer zero points z (out, in/g) uint8 of weight (out, in).

    σ is rounded to fp16 *before* z is derived, so every later use of the stored σ reproduces the
    same integers.
    """
    out_f, in_f = w.shape
    wg = w.detach().float().reshape(out_f, in_f // group, group)
    if sym:
        amax = wg.abs().amax(-1)
        scale = (2 * amax / QMAX).clamp(min=FP16_TINY).half()
        zero = torch.full_like(amax, 8, dtype=torch.uint8)
        return scale, zero
    lo = wg.amin(-1).clamp(max=0)
    hi = wg.amax(-1).clamp(min=0)
    scale = ((hi - lo) / QMAX).clamp(min=FP16_TINY).half()
    zero = torch.round(-lo / scale.float()).clamp(0, QMAX).to(torch.uint8)
    return scale, zero


def quantize(w: Tensor, scale: Tensor, zero: Tensor) -> Tensor:
    """Integers q (out, in) uint8 of weight (out, in) on the grid (σ, z) of shape (out, in/g)."""
    group = w.shape[1] // scale.shape[1]
    s, z = expand(scale.float(), group), expand(zero.float(), group)
    return torch.clamp(torch.round(w.float() / s) + z, 0, QMAX).to(torch.uint8)


def dequantize(q: Tensor, scale: Tensor, zero: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """Q(w) = σ (q - z): (out, in) in `dtype`. Exactly 0 wherever q == z."""
    group = q.shape[1] // scale.shape[1]
    s, z = expand(scale.to(dtype), group), expand(zero.to(dtype), group)
    return s * (q.to(dtype) - z)


def pack(q: Tensor) -> Tensor:
    """(out, in) uint8 in [0, 15] -> (out, in/2) uint8; even input column in the low nibble."""
    q = q.to(torch.uint8)
    return q[:, 0::2] | (q[:, 1::2] << 4)


def unpack(packed: Tensor) -> Tensor:
    """(out, in/2) uint8 -> (out, in) uint8: inverse of `pack`."""
    low, high = packed & 0x0F, packed >> 4
    return torch.stack((low, high), dim=-1).reshape(packed.shape[0], -1)
