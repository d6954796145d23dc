"""`Int4Linear`: a Linear whose weight lives as packed INT4 integers plus fp16 group scales."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .int4 import dequantize, pack, unpack


class Int4Linear(nn.Module):
    """y = x Q(W)ᵀ + b with Q(W) = σ (q - z) decoded on the fly (torch inference and training).

    Buffers (state_dict names follow the `int4.safetensors` format):
        qweight: (out, in/2) uint8, two 4-bit integers per byte, low nibble = even input column.
        scales: (out, in/g) float16.  zeros: (out, in/g) uint8 integer zero points.
    """

    def __init__(self, in_features: int, out_features: int, group_size: int, *,
                 bias: Tensor | None = None, device=None):
        super().__init__()
        if in_features % 2 or in_features % group_size:
            raise ValueError(f"in_features={in_features} must be even and divisible by {group_size}")
        self.in_features, self.out_features, self.group_size = in_features, out_features, group_size
        n_groups = in_features // group_size
        self.register_buffer("qweight", torch.zeros(out_features, in_features // 2,
                                                    dtype=torch.uint8, device=device))
        self.register_buffer("scales", torch.ones(out_features, n_groups, dtype=torch.float16,
                                                  device=device))
        self.register_buffer("zeros", torch.zeros(out_features, n_groups, dtype=torch.uint8,
                                                  device=device))
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)

    @classmethod
    def from_quantized(cls, q: Tensor, scales: Tensor, zeros: Tensor, bias: Tensor | None = None
                       ) -> Int4Linear:
        """Build from integers q (out, in) uint8 and the grid (σ, z) of shape (out, in/g)."""
        out_f, in_f = q.shape
        mod = cls(in_f, out_f, in_f // scales.shape[1], bias=bias, device=q.device)
        mod.qweight.copy_(pack(q))
        mod.scales.copy_(scales)
        mod.zeros.copy_(zeros)
        return mod

    def int_weight(self) -> Tensor:
        """The integers q: (out, in) uint8."""
        return unpack(self.qweight)

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> Tensor:
        """Q(W): (out, in); exactly 0 where q == z."""
        return dequantize(self.int_weight(), self.scales, self.zeros, dtype)

    @property
    def weight(self) -> Tensor:  # what code written for nn.Linear reads
        return self.dequantized_weight()

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.dequantized_weight(), self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, " \
               f"group_size={self.group_size}, bits=4"
