"""Configuration of the `quantize` stage: INT4 weight-only on the sparse base."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..errors import ConfigError
from ..sparsity.config import DECODER_LINEARS


@dataclass(frozen=True)
class Int4Config:
    """INT4 weight-only quantization that keeps every pruned zero (SQFT §3.2).

    Args:
        method: `rtn` (round to nearest on the grid) or `gptq` (mask-aware GPTQ: error feedback
            that never touches a pruned weight).
        bits: only 4.
        group_size: input channels per scale/zero pair; -1 = one group per output row. Default 64:
            SmolLM2's 576-channel layers are not divisible by 128, and its weights already sit
            on a group-32 grid (Q4_1 GGUF), so 32 would look deceptively lossless.
        sym: symmetric grid (zero point 8) instead of asymmetric.
        per_layer_fallback: where `group_size` does not divide a layer's input channels, use the
            largest divisor below it (recorded per layer) instead of failing.
        act_order: GPTQ quantizes columns by decreasing Hessian diagonal (static groups).
        damp: GPTQ dampening, as a fraction of the mean Hessian diagonal.
        target_modules: FQN suffixes of the Linear layers to quantize.
        calib_samples, calib_seq_len, seed: GPTQ calibration text from the task's train split.
    """

    method: Literal["rtn", "gptq"] = "gptq"
    bits: int = 4
    group_size: int = 64
    sym: bool = False
    per_layer_fallback: bool = False
    act_order: bool = False
    damp: float = 0.01
    target_modules: tuple[str, ...] = DECODER_LINEARS
    calib_samples: int = 64
    calib_seq_len: int = 128
    seed: int = 0

    def __post_init__(self):
        if self.method not in ("rtn", "gptq"):
            raise ConfigError(f"`quantize.method`={self.method!r}; use 'rtn' or 'gptq'.")
        if self.bits != 4:
            raise ConfigError(f"`quantize.bits`={self.bits!r}; only 4-bit weights are supported.")
        if not isinstance(self.group_size, int) or not (self.group_size == -1 or self.group_size >= 2):
            raise ConfigError(
                f"`quantize.group_size`={self.group_size!r}; use 32, 64, 128 or -1 (per channel).")
        if not 0 < self.damp < 1:
            raise ConfigError(f"`quantize.damp`={self.damp!r} must be in (0, 1); try 0.01.")
        object.__setattr__(self, "target_modules", tuple(self.target_modules))
        if not self.target_modules:
            raise ConfigError("`quantize.target_modules` is empty; name at least one Linear suffix.")
        for name in ("calib_samples", "calib_seq_len"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ConfigError(f"`quantize.{name}` must be a positive int, got {v!r}.")
