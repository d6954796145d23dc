"""Configuration of NLS elastic low-rank adapters."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..errors import ConfigError

MODES = ("lora", "sparsepeft", "sqft", "qa-sparsepeft")


@dataclass(frozen=True)
class NLSConfig:
    """Elastic-rank LoRA (Neural Low-rank adapter Search, SQFT §3.1).

    Args:
        mode: `lora` (plain elastic adapters, the paper's Shears row), `sparsepeft`
            (ΔW = (s·B_r A_r) ⊙ M, so merging keeps the base's sparsity exactly), `sqft` (plain
            adapters on the frozen INT4 base, left unmerged) or `qa-sparsepeft` (y =
            Q_{σ,z}(W̃ + ΔW ⊙ M) x on the INT4 base's frozen grid: merges into an INT4 model that
            equals the trained one). The last two need a quantized base (`Int4Linear` targets).
        qa_base: QA-SparsePEFT's W̃: `dequantized` (the INT4 base's Q(W): at ΔW = 0 exactly the
            GPTQ model, but every weight sits mid-step and needs a half-step update to change) or
            `fp` (the FP sparse weights, the paper's choice: W̃ + ΔW⊙M is rounded on GPTQ's grid,
            so training moves any weight near a rounding boundary; the default: best on held-out
            items, with learned scales, in the README's comparison).
        rank_space: ranks an adapter can be sliced to. Stored sorted, largest first.
        alpha: LoRA scaling numerator; `scaling = alpha / max(rank_space)` for every sub-rank.
        dropout: dropout on the adapter input only (never on the frozen base path). Default 0:
            SparsePEFT then trains on W + ΔW ⊙ M with one matmul per layer; with dropout it needs
            a second dense matmul for the adapter path.
        target_modules: FQN suffixes of the Linear layers to adapt.
        elastic_modules: targets whose rank is elastic; those of one decoder block share one
            sampled rank (the paper: q/k/v). Other targets stay at `max(rank_space)`.
        memory_efficient: SparsePEFT / QA-SparsePEFT training recomputes each layer's effective
            weight in backward instead of keeping it from forward (same gradients): less peak
            memory for a little more time per step (measured in benchmarks/train_speed.py).
        learn_scales: QA-SparsePEFT (other modes ignore it, as they ignore `qa_base`): the INT4
            group scales σ train beside the adapters (fp32 masters, `finetune.scales_lr`; zero
            points fixed). Zeros stay zeros for every σ, and the INT4 merge writes the trained σ,
            so merge and export stay exact. On by default (best on held-out items).
    """

    mode: Literal["lora", "sparsepeft", "sqft", "qa-sparsepeft"] = "qa-sparsepeft"
    rank_space: tuple[int, ...] = (32, 24, 16)
    alpha: float = 64.0
    dropout: float = 0.0
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "up_proj", "down_proj")
    elastic_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj")
    qa_base: Literal["dequantized", "fp"] = "fp"
    memory_efficient: bool = False
    learn_scales: bool = True

    def __post_init__(self):
        if self.mode not in MODES:
            raise ConfigError(f"`finetune.mode`={self.mode!r}; use one of {list(MODES)}.")
        if self.qa_base not in ("dequantized", "fp"):
            raise ConfigError(f"`finetune.qa_base`={self.qa_base!r}; use 'dequantized' or 'fp'.")
        if self.mode == "qa-sparsepeft" and self.dropout:
            raise ConfigError(
                f"`finetune.dropout`={self.dropout} with mode 'qa-sparsepeft': the update is added "
                "to the weights before quantization, so there is no separate adapter path to drop "
                "out (dropping the base path is a known defect); set dropout to 0."
            )
        try:
            ranks = tuple(sorted({int(r) for r in self.rank_space}, reverse=True))
        except (TypeError, ValueError) as e:
            raise ConfigError(
                f"`finetune.rank_space` must be a list of positive ints, got {self.rank_space!r}."
            ) from e
        if not ranks or ranks[-1] < 1:
            raise ConfigError(
                f"`finetune.rank_space`={list(self.rank_space)!r} must hold at least one positive "
                "int; use e.g. [32, 24, 16]."
            )
        object.__setattr__(self, "rank_space", ranks)  # JSON hands back lists: store tuples
        object.__setattr__(self, "target_modules", tuple(self.target_modules))
        object.__setattr__(self, "elastic_modules", tuple(self.elastic_modules))
        if not self.target_modules:
            raise ConfigError("`finetune.target_modules` is empty; name at least one Linear suffix.")
        stray = [m for m in self.elastic_modules if m not in self.target_modules]
        if stray:
            raise ConfigError(
                f"`finetune.elastic_modules` {stray} are not in target_modules "
                f"{list(self.target_modules)}; add them there or remove them."
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"`finetune.dropout`={self.dropout} must be in [0, 1).")
        if self.alpha <= 0:
            raise ConfigError(f"`finetune.alpha`={self.alpha} must be positive.")

    @property
    def trains_scales(self) -> bool:
        """Whether the INT4 scales train (`learn_scales` in QA-SparsePEFT)."""
        return self.learn_scales and self.mode == "qa-sparsepeft"

    @property
    def quantized_base(self) -> bool:
        """Whether the mode trains on the INT4 base of a quantize stage."""
        return self.mode in ("sqft", "qa-sparsepeft")

    @property
    def default_lr(self) -> float:
        """The learning rate when the recipe gives none. QA-SparsePEFT's update only shows once
        it crosses half an INT4 grid step, so it needs a larger one than FP adapters."""
        return 2e-3 if self.mode == "qa-sparsepeft" else 3e-4

    @property
    def masked(self) -> bool:
        return self.mode in ("sparsepeft", "qa-sparsepeft")

    @property
    def max_rank(self) -> int:
        return self.rank_space[0]

    @property
    def scaling(self) -> float:
        return self.alpha / self.max_rank
