"""Memory-efficient SparsePEFT and QA-SparsePEFT layers: recompute the merged weight in backward.

Plain autograd keeps, per adapted layer, the dense effective weight W + ΔW⊙M (SparsePEFT; as the
low-precision copy F.linear saves under autocast) or Q(W̃ + ΔW⊙M) plus its clamp mask
(QA-SparsePEFT) from forward until backward: one dense matrix per layer for the whole model.
These functions save only the input and references to tensors that exist anyway (the frozen
weight, the factors, the mask, the grid) and rebuild the effective weight in backward, so the
extra memory is one layer's weight at a time. Same arithmetic, same gradients (tested).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..quantization.fake_quant import grouped, ste_grads
from ..quantization.int4 import QMAX


def _compute_dtype(x: Tensor) -> torch.dtype | None:
    dev = x.device.type
    return torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else None


def _delta(lora_A: Tensor, lora_B: Tensor, scaling: float, dtype: torch.dtype | None) -> Tensor:
    """s·B A in the dtype autocast gave the forward's matmul (fp32 without autocast)."""
    if dtype is None:
        return (lora_B @ lora_A) * scaling
    return (lora_B.to(dtype) @ lora_A.to(dtype)) * scaling


def _grads_AB(gw: Tensor, lora_A: Tensor, lora_B: Tensor, scaling: float, dtype):
    """(dA, dB) from the gradient of the masked delta's input gw = ∂L/∂(s·B A), in the factors' dtype."""
    gw = gw * scaling
    if dtype is not None:
        gw, a, b = gw.to(dtype), lora_A.to(dtype), lora_B.to(dtype)
    else:
        a, b = lora_A, lora_B
    return (b.T @ gw).to(lora_A.dtype), (gw @ a.T).to(lora_B.dtype)


class SparsePEFTLinear(torch.autograd.Function):
    """y = x (W + s·(B A) ⊙ M)ᵀ + b, saving x but not the dense effective weight."""

    @staticmethod
    def forward(ctx, x, weight, lora_A, lora_B, mask, scaling, bias):
        dtype = _compute_dtype(x)
        w = weight + _delta(lora_A, lora_B, scaling, dtype) * mask  # (out, in), freed after forward
        xc = x if dtype is None else x.to(dtype)  # saved in the compute dtype, as autocast would
        ctx.save_for_backward(xc, weight, lora_A, lora_B, mask)
        ctx.scaling, ctx.dtype, ctx.x_dtype = scaling, dtype, x.dtype
        return F.linear(xc, w if dtype is None else w.to(dtype),
                        None if bias is None else (bias if dtype is None else bias.to(dtype)))

    @staticmethod
    def backward(ctx, g):
        x, weight, lora_A, lora_B, mask = ctx.saved_tensors
        s, dtype = ctx.scaling, ctx.dtype
        cd = dtype or g.dtype
        w = (weight + _delta(lora_A, lora_B, s, dtype) * mask).to(cd)  # recomputed, one layer
        g2 = g.reshape(-1, g.shape[-1]).to(cd)  # (N, out)
        gx = (g2 @ w).reshape(*g.shape[:-1], w.shape[1]).to(ctx.x_dtype)
        gw = (g2.T @ x.reshape(-1, x.shape[-1]).to(cd)) * mask  # (out, in): ∂L/∂ΔW ⊙ M
        ga, gb = _grads_AB(gw, lora_A, lora_B, s, dtype)
        return gx, None, ga, gb, None, None, None


class QASparsePEFTLinear(torch.autograd.Function):
    """y = x Q_{σ,z}(W̃ + s·(B A) ⊙ M)ᵀ + b with the straight-through estimator, recomputed in backward.
    `scales` may be learned (then it gets LSQ's gradient; pass the fp16-rounded σ).

    W̃ + ΔW⊙M is always formed in fp32 with autocast off (as `ElasticLoraLinear.qa_target`), so the
    integers equal the ones the INT4 merge writes.
    """

    @staticmethod
    def forward(ctx, x, qa_base, lora_A, lora_B, mask, scaling, scales, zeros, bias):
        w, *_ = QASparsePEFTLinear._effective(qa_base, lora_A, lora_B, mask, scaling, scales, zeros)
        dtype = _compute_dtype(x)
        xc = x if dtype is None else x.to(dtype)
        ctx.save_for_backward(xc, qa_base, lora_A, lora_B, mask, scales, zeros)
        ctx.scaling, ctx.dtype, ctx.x_dtype = scaling, dtype, x.dtype
        return F.linear(xc, w if dtype is None else w.to(dtype),
                        None if bias is None else (bias if dtype is None else bias.to(dtype)))

    @staticmethod
    def _effective(qa_base, lora_A, lora_B, mask, scaling, scales, zeros):
        """(Q(target) fp32, grouped target, σ, z) for target = W̃ + s·(B A)⊙M in fp32."""
        with torch.autocast(lora_A.device.type, enabled=False):
            target = qa_base + ((lora_B.float() @ lora_A.float()) * scaling) * mask
            t, s, z = grouped(target, scales.detach(), zeros)
            v = torch.round(t / s) + z
            return (s * (v.clamp(0, QMAX) - z)).view_as(target), t, s, z

    @staticmethod
    def backward(ctx, g):
        x, qa_base, lora_A, lora_B, mask, scales, zeros = ctx.saved_tensors
        w, t, s, z = QASparsePEFTLinear._effective(qa_base, lora_A, lora_B, mask, ctx.scaling,
                                                   scales, zeros)
        cd = ctx.dtype or g.dtype
        g2 = g.reshape(-1, g.shape[-1]).to(cd)
        gx = (g2 @ w.to(cd)).reshape(*g.shape[:-1], w.shape[1]).to(ctx.x_dtype)
        gq = (g2.T @ x.reshape(-1, x.shape[-1]).to(cd)).float()  # ∂L/∂Q(target): (out, in)
        need_scale = ctx.needs_input_grad[6]
        g_t, g_s = ste_grads(gq.view_as(t), t, s, z, need_scale=need_scale)  # STE (and LSQ for σ)
        gw = g_t.view_as(w) * mask
        ga, gb = _grads_AB(gw, lora_A, lora_B, ctx.scaling, None)  # fp32, as the target was
        g_scales = g_s.squeeze(-1).to(scales.dtype) if need_scale else None
        return gx, None, ga, gb, None, None, g_scales, None, None
