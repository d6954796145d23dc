"""QA-SparsePEFT's fake quantization on the base's frozen INT4 grid (SQFT §3.2). Pure torch.

Training and the INT4 merge call the same `qa_integers`, in fp32, so the merged integers equal the
ones the trained forward used, bit for bit.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .int4 import FP16_TINY, QMAX


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


def ste_grads(grad: Tensor, t: Tensor, s: Tensor, z: Tensor, *, need_scale: bool
              ) -> tuple[Tensor, Tensor | None]:
    """Gradients of y = σ (clamp(round(t/σ) + z, 0, 15) - z) on grouped tensors (see `grouped`).

    Straight-through rounding: ∂y/∂t = 1 inside the clamp, 0 outside; ∂y/∂σ = (q - z) - t/σ
    inside, (q - z) outside (LSQ), summed over each group: (out, in/g, 1). Where t = 0 (a pruned
    weight) q = z and ∂y/∂σ = 0: a learned σ never moves a zero.
    """
    v = torch.round(t / s) + z
    inside = (v >= 0) & (v <= QMAX)
    g_t = grad * inside
    if not need_scale:
        return g_t, None
    g_s = (grad * (v.clamp(0, QMAX) - z - inside * (t / s))).sum(-1, keepdim=True)
    return g_t, g_s


class _FakeQuantSTE(torch.autograd.Function):
    """Q(t) forward; straight-through gradient only where round(t/σ)+z is inside [0, 15], and
    LSQ's gradient for σ when σ is learned."""

    @staticmethod
    def forward(ctx, target: Tensor, s: Tensor, z: Tensor) -> Tensor:
        v = torch.round(target / s) + z
        ctx.learned = s.requires_grad
        if ctx.learned:  # σ's gradient needs t itself
            ctx.save_for_backward(target, s, z)
        else:  # only the 1-byte clamp mask: less memory than the fp32 target
            ctx.save_for_backward((v >= 0) & (v <= QMAX))
        return s * (v.clamp(0, QMAX) - z)

    @staticmethod
    def backward(ctx, grad: Tensor):
        if not ctx.learned:
            (inside,) = ctx.saved_tensors
            return grad * inside, None, None
        t, s, z = ctx.saved_tensors
        g_t, g_s = ste_grads(grad, t, s, z, need_scale=True)
        return g_t, g_s, None


def round_fp16_ste(scale: Tensor) -> Tensor:
    """The fp32 master σ rounded to fp16 in value (what the INT4 file stores), gradient passed
    straight through. Exact: σ and its fp16 rounding are within a factor 2 (Sterbenz)."""
    s = scale.clamp(min=FP16_TINY)
    return s + (s.detach().half().float() - s.detach())


def fake_quant(target: Tensor, scale: Tensor, zero: Tensor) -> Tensor:
    """σ (q' - z) with a straight-through estimator: (out, in) fp32, differentiable in `target`
    (and in `scale` when it requires grad: QA-SparsePEFT with learned scales).

    Zero wherever target is zero (q' = z): a masked update keeps pruned weights at exactly 0.
    """
    t, s, z = grouped(target, scale, zero)
    return _FakeQuantSTE.apply(t, s, z).reshape(target.shape)
