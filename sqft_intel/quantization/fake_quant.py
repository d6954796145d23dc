"""QA-SparsePEFT's fake quantization on the base's frozen INT4 grid (SQFT §3.2). Pure torch.

Training and the INT4 merge call the same `qa_integers`, in fp32, so the merged integers equal the
ones the trained forward used, bit for bit.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .int4 import QMAX


def grouped(target: Tensor, scale: Tensor, zero: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """target (out, in) as (out, in/g, g) fp32 with σ, z as (out, in/g, 1) fp32: broadcasting
    instead of expanding σ and z to two dense (out, in) tensors every forward (same numbers)."""
    out_f, in_f = target.shape
    t = target.float().reshape(out_f, scale.shape[1], in_f // scale.shape[1])
    return t, scale.float().unsqueeze(-1), zero.float().unsqueeze(-1)


def qa_integers(target: Tensor, scale: Tensor, zero: Tensor) -> Tensor:
    """q' = clamp(round(target/σ) + z, 0, 15): (out, in) uint8 for target (out, in) fp32."""
    t, s, z = grouped(target, scale, zero)
    return torch.clamp(torch.round(t / s) + z, 0, QMAX).to(torch.uint8).reshape(target.shape)


class _FakeQuantSTE(torch.autograd.Function):
    """Q(t) forward; straight-through gradient only where round(t/σ)+z is inside [0, 15]."""

    @staticmethod
    def forward(ctx, target: Tensor, s: Tensor, z: Tensor) -> Tensor:
        v = torch.round(target / s) + z
        inside = (v >= 0) & (v <= QMAX)
        ctx.save_for_backward(inside)
        return s * (v.clamp(0, QMAX) - z)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (inside,) = ctx.saved_tensors
        return grad * inside, None, None


def fake_quant(target: Tensor, scale: Tensor, zero: Tensor) -> Tensor:
    """σ (q' - z) with a straight-through estimator: (out, in) fp32, differentiable in `target`.

    Zero wherever target is zero (q' = z): a masked update keeps pruned weights at exactly 0.
    """
    t, s, z = grouped(target, scale, zero)
    return _FakeQuantSTE.apply(t, s, z).reshape(target.shape)
