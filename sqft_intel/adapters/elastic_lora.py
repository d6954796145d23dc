"""`ElasticLoraLinear`: one frozen Linear plus one weight-shared elastic low-rank adapter."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..quantization.fake_quant import fake_quant, round_fp16_ste


class ElasticLoraLinear(nn.Module):
    """y = W x + s · (B_r A_r ⊙ M) drop(x), with r the active rank (SQFT Eq. 2; M = None for LoRA).

    A sub-adapter of rank r uses the leading slices A[:r], B[:, :r] (NLS weight sharing) and keeps
    s = alpha / r_max. The active rank is a plain attribute set once per optimizer step by
    `sample_ranks_`: a recomputed forward under gradient checkpointing sees the same rank.

    Args:
        base: the frozen Linear (out, in).
        rank_space: allowed ranks, largest first.
        scaling: s = alpha / r_max.
        mask: (out, in) bool keep-mask for SparsePEFT, or None for plain LoRA.
        group: name of the rank group this adapter's rank is sampled with.
        qa_base: QA-SparsePEFT only (base is an `Int4Linear`): W̃ (out, in) fp32, the weights the
            masked update is added to before fake quantization on the base's grid:
            y = Q_{σ,z}(W̃ + ΔW ⊙ M) x.
        learn_scales: QA-SparsePEFT only: the group scales σ (out, in/g) train too, as an fp32
            master whose fp16 rounding the forward uses (what the merge writes); z stays fixed.
            A pruned weight sits at q = z, so σ (q - z) = 0 for every σ: sparsity stays exact.
    """

    def __init__(self, base: nn.Module, *, rank_space: tuple[int, ...], scaling: float,
                 dropout: float, mask: Tensor | None, group: str, qa_base: Tensor | None = None,
                 memory_efficient: bool = False, learn_scales: bool = False):
        super().__init__()
        self.base = base
        self.base.requires_grad_(False)
        r_max = rank_space[0]
        w = base.weight
        self.lora_A = nn.Parameter(torch.empty(r_max, base.in_features, device=w.device))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r_max, device=w.device))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # B = 0: training starts at W
        self.scaling = float(scaling)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        if mask is not None and tuple(mask.shape) != tuple(w.shape):
            raise ValueError(f"mask shape {tuple(mask.shape)} != weight shape {tuple(w.shape)}")
        self.register_buffer("mask", None if mask is None else mask.to(torch.bool), persistent=False)
        if qa_base is not None and mask is None:
            raise ValueError("QA-SparsePEFT needs the sparsity mask")
        self.register_buffer("qa_base", None if qa_base is None else qa_base.float(),
                             persistent=False)
        if learn_scales and qa_base is None:
            raise ValueError("learned scales need QA-SparsePEFT (an INT4 base and qa_base)")
        self.learned_scales = nn.Parameter(base.scales.detach().float().clone()) if learn_scales \
            else None
        self.rank_space = tuple(rank_space)
        self.group = group
        self.memory_efficient = memory_efficient
        self.active_rank = r_max

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    def delta_weight(self, rank: int | None = None) -> Tensor:
        """ΔW = s · B[:, :r] A[:r] (⊙ M): (out, in), in the adapters' dtype."""
        r = self.active_rank if rank is None else rank
        delta = (self.lora_B[:, :r] @ self.lora_A[:r]) * self.scaling
        return delta * self.mask if self.mask is not None else delta

    def qa_target(self, rank: int | None = None) -> Tensor:
        """W̃ + ΔW ⊙ M in fp32 with autocast off: the forward and the INT4 merge round the very
        same numbers, so the merged integers equal the trained ones bit for bit."""
        with torch.autocast(self.lora_A.device.type, enabled=False):
            return self.qa_base + self.delta_weight(rank).float()

    def grid_scales(self) -> Tensor:
        """σ of the INT4 grid (out, in/g): the base's, or the learned master rounded to fp16 in
        value (straight-through), so forward and merge use the numbers the INT4 file will hold."""
        if self.learned_scales is None:
            return self.base.scales
        return round_fp16_ste(self.learned_scales)

    def forward(self, x: Tensor) -> Tensor:
        r = self.active_rank
        if self.memory_efficient and torch.is_grad_enabled() and self.mask is not None and (
                self.qa_base is not None or isinstance(self.dropout, nn.Identity) or not self.training):
            return self._efficient(x, r)
        if self.qa_base is not None:  # QA-SparsePEFT: y = Q_{σ,z}(W̃ + ΔW ⊙ M) x
            w = fake_quant(self.qa_target(r), self.grid_scales(), self.base.zeros)
            return F.linear(x, w, self.base.bias)
        if self.mask is None:  # plain LoRA: two skinny matmuls, ΔW never materialized
            xd = self.dropout(x)
            lora = F.linear(F.linear(xd, self.lora_A[:r]), self.lora_B[:, :r]) * self.scaling
            return self.base(x) + lora
        if self.training and not isinstance(self.dropout, nn.Identity):
            # dropout must hit the adapter path only: two dense matmuls
            return self.base(x) + F.linear(self.dropout(x), self.delta_weight(r))
        # SparsePEFT without dropout: one matmul on exactly the weights the merge will write,
        # W + ΔW ⊙ M (3 matmuls per step instead of 5; the merge is the same arithmetic)
        return F.linear(x, self.base.weight + self.delta_weight(r), self.base.bias)

    def _efficient(self, x: Tensor, r: int) -> Tensor:
        """The same function, recomputing the effective weight in backward (adapters/efficient.py)."""
        from .efficient import QASparsePEFTLinear, SparsePEFTLinear

        a, b = self.lora_A[:r], self.lora_B[:, :r]
        if self.qa_base is not None:
            return QASparsePEFTLinear.apply(x, self.qa_base, a, b, self.mask, self.scaling,
                                            self.grid_scales(), self.base.zeros, self.base.bias)
        return SparsePEFTLinear.apply(x, self.base.weight, a, b, self.mask, self.scaling, self.base.bias)

    def extra_repr(self) -> str:
        kind = "qa-sparsepeft" if self.qa_base is not None else (
            "sparsepeft" if self.mask is not None else "lora")
        kind += ", learned scales" if self.learned_scales is not None else ""
        return f"{kind}, rank_space={self.rank_space}, active_rank={self.active_rank}, group={self.group}"
