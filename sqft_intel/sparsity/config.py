"""Configuration of the `sparsify` stage."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..errors import ConfigError

DECODER_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class SparsityConfig:
    """Wanda pruning (Sun et al., 2024): score |W_ij|·‖X_j‖₂, drop the lowest per output row.

    Args:
        method: only `wanda` (scores need calibration activations).
        sparsity: fraction of weights zeroed in every output row, in [0, 1). Ignored for N:M.
        nm: `(n, m)` zeroes the `n` lowest-scoring weights in every `m` consecutive inputs.
        target_modules: FQN suffixes of Linear layers inside decoder blocks to prune;
            embeddings and lm_head always stay dense.
        calib_samples: number of calibration sequences drawn from the task's train text.
        calib_seq_len: tokens per calibration sequence.
        seed: which calibration text is drawn.
    """

    method: Literal["wanda"] = "wanda"
    sparsity: float = 0.5
    nm: tuple[int, int] | None = None
    target_modules: tuple[str, ...] = DECODER_LINEARS
    calib_samples: int = 64
    calib_seq_len: int = 128
    seed: int = 0

    def __post_init__(self):
        if self.method != "wanda":
            raise ConfigError(f"`sparsify.method`={self.method!r}; the only method is 'wanda'.")
        if isinstance(self.sparsity, bool) or not isinstance(self.sparsity, (int, float)):
            raise ConfigError(f"`sparsify.sparsity` must be a number in [0, 1), got {self.sparsity!r}.")
        if not 0.0 <= self.sparsity < 1.0:
            raise ConfigError(
                f"`sparsify.sparsity`={self.sparsity} is outside [0, 1); use e.g. 0.5 for 50 %."
            )
        if self.nm is not None:
            nm = tuple(self.nm)
            if len(nm) != 2 or not all(isinstance(v, int) and v > 0 for v in nm):
                raise ConfigError(f"`sparsify.nm` must be two positive ints [n, m], got {self.nm!r}.")
            if nm[0] >= nm[1]:
                raise ConfigError(
                    f"`sparsify.nm`={list(nm)}: n must be smaller than m (n of every m inputs are "
                    "zeroed); use e.g. [2, 4]."
                )
            object.__setattr__(self, "nm", nm)
        targets = tuple(self.target_modules)
        if not targets:
            raise ConfigError("`sparsify.target_modules` is empty; name at least one Linear suffix.")
        object.__setattr__(self, "target_modules", targets)
        for name in ("calib_samples", "calib_seq_len"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ConfigError(f"`sparsify.{name}` must be a positive int, got {v!r}.")

    @property
    def target_sparsity(self) -> float:
        """The fraction of zeros each targeted weight will have."""
        return self.nm[0] / self.nm[1] if self.nm else float(self.sparsity)
