"""Mask-aware GPTQ (Frantar et al., 2023) for sparse weights. Pure torch.

No library GPTQ could be used: all of them (AutoGPTQ, GPTQModel, llm-compressor, INC, optimum)
let the error feedback W[:, j>i] -= err_i · Hinv[i, j] rewrite every weight, pruned ones included,
so the result is dense again. Here pruned weights are held at q = z (dequantized exactly 0) and the
update is multiplied by the mask, so sparsity after quantization equals sparsity before.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .int4 import dequantize, group_params, quantize


def hessian_inverse_chol(H: Tensor, damp: float) -> Tensor:
    """Upper Cholesky factor of (H + λI)^-1, λ = damp · mean(diag H) (GPTQ Alg. 1). H: (in, in)."""
    H = H.clone()
    H.diagonal().add_(damp * H.diagonal().mean().clamp(min=1e-8))
    L = torch.linalg.cholesky(H)
    return torch.linalg.cholesky(torch.cholesky_inverse(L), upper=True)


def gptq_quantize(
    W: Tensor, H: Tensor, mask: Tensor, *, group: int, sym: bool, damp: float = 0.01,
    act_order: bool = False, block: int = 128,
) -> tuple[Tensor, Tensor, Tensor]:
    """Quantize one layer with error feedback that never changes a pruned weight.

    Args:
        W: (out, in) weight, zero wherever `mask` is False.
        H: (in, in) Σ x xᵀ over calibration tokens (any positive scale).
        mask: (out, in) bool keep-mask.
        group: input channels per (σ, z) group; divides `in`.
        act_order: process columns by decreasing diag(H); group grids are then fixed up front
            from W (static groups), otherwise each group's grid is fitted to its updated weights.

    Returns:
        q (out, in) uint8, scales (out, in/g) fp16, zeros (out, in/g) uint8.
    """
    out_f, in_f = W.shape
    W = W.detach().float().clone()
    H = H.detach().float().clone()
    keep = mask.to(W.device)
    dead = H.diagonal() == 0  # inputs never active: any weight there is free
    H[dead, dead] = 1.0
    n_groups = in_f // group
    scales = torch.empty(out_f, n_groups, dtype=torch.float16, device=W.device)
    zeros = torch.empty(out_f, n_groups, dtype=torch.uint8, device=W.device)
    if act_order:
        scales, zeros = group_params(W, group, sym=sym)
        perm = torch.argsort(H.diagonal(), descending=True)
    else:
        perm = torch.arange(in_f, device=W.device)
    inv = torch.argsort(perm)
    W, H, keep = W[:, perm], H[perm][:, perm], keep[:, perm]
    Hinv = hessian_inverse_chol(H, damp)
    Q = torch.zeros_like(W)
    block = max(group, (block // group) * group) if not act_order else block
    for i1 in range(0, in_f, block):
        i2 = min(i1 + block, in_f)
        W1, keep1, Hinv1 = W[:, i1:i2].clone(), keep[:, i1:i2], Hinv[i1:i2, i1:i2]
        Err1 = torch.zeros_like(W1)
        for i in range(i2 - i1):
            col = int(perm[i1 + i])  # original column index
            g = col // group
            if not act_order and col % group == 0:  # fit the grid to the updated weights
                s, z = group_params(W1[:, i:i + group], group, sym=sym)
                scales[:, g], zeros[:, g] = s[:, 0], z[:, 0]
            s, z = scales[:, g:g + 1], zeros[:, g:g + 1]
            w = W1[:, i:i + 1] * keep1[:, i:i + 1]  # (out, 1); pruned entries are exactly 0
            q = quantize(w, s, z)  # a pruned 0 lands on q = z
            Q[:, i1 + i:i1 + i + 1] = dequantize(q, s, z)
            err = (w - Q[:, i1 + i:i1 + i + 1]) / Hinv1[i, i]  # (out, 1); 0 on pruned rows
            # masked OBS update: later kept weights absorb the error, pruned ones stay 0
            W1[:, i + 1:] -= (err @ Hinv1[i:i + 1, i + 1:]) * keep1[:, i + 1:]
            Err1[:, i:i + 1] = err
        W[:, i2:] -= (Err1 @ Hinv[i1:i2, i2:]) * keep[:, i2:]
    Q = Q[:, inv]
    q = quantize(Q, scales, zeros)
    return q, scales, zeros
