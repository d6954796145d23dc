"""Wanda masks (Sun et al., "A Simple and Effective Pruning Approach for LLMs", 2024). Pure torch."""

from __future__ import annotations

import torch
from torch import Tensor


def wanda_scores(weight: Tensor, act_sq_sum: Tensor) -> Tensor:
    """S_ij = |W_ij| · ‖X_j‖₂  (Wanda Eq. 1).

    weight: (out, in). act_sq_sum: (in,) sum over calibration tokens of x_j². Returns (out, in) fp32.
    """
    return weight.detach().abs().float() * act_sq_sum.float().sqrt().unsqueeze(0)


def row_mask(scores: Tensor, sparsity: float) -> Tensor:
    """Keep-mask zeroing the `floor(in·sparsity)` lowest scores of every output row.

    scores: (out, in). Returns (out, in) bool, True = keep. Per-row comparison groups are Wanda's
    finding for LLMs (better than per-layer).
    """
    out_f, in_f = scores.shape
    k = int(in_f * sparsity)
    keep = torch.ones(out_f, in_f, dtype=torch.bool, device=scores.device)
    if k == 0:
        return keep
    drop = scores.topk(k, dim=1, largest=False).indices  # (out, k)
    return keep.scatter_(1, drop, False)


def nm_mask(scores: Tensor, n: int, m: int) -> Tensor:
    """Keep-mask zeroing the `n` lowest-scoring weights in every `m` consecutive inputs.

    scores: (out, in) float. Returns (out, in) bool, True = keep.
    """
    out_f, in_f = scores.shape
    if in_f % m:  # api.py has already raised a ConfigError naming the layer; this guards direct calls
        raise ValueError(f"in_features={in_f} is not a multiple of m={m}")
    groups = scores.reshape(out_f, in_f // m, m)
    drop = groups.topk(n, dim=-1, largest=False).indices
    return torch.ones_like(groups, dtype=torch.bool).scatter_(-1, drop, False).reshape(out_f, in_f)


def wanda_mask(
    weight: Tensor, act_sq_sum: Tensor, *, sparsity: float, nm: tuple[int, int] | None
) -> Tensor:
    """Wanda keep-mask for one layer: N:M when `nm` is given, else per-row unstructured."""
    scores = wanda_scores(weight, act_sq_sum)
    return nm_mask(scores, *nm) if nm else row_mask(scores, sparsity)
