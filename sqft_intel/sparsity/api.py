"""`sparsify_`: Wanda, block by block, with inputs propagated through the already-pruned blocks."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from ..artifacts import save_stage
from ..errors import ConfigError
from ..targets import find_targets
from .calibrate import blockwise, input_norms
from .config import SparsityConfig
from .masks import save_masks
from .wanda import wanda_mask


@dataclass
class SparsityResult:
    """What `sparsify_` did.

    Attributes:
        masks: weight name (state_dict key) -> bool (out, in), True = kept.
        sparsity: weight name -> measured fraction of exact zeros after pruning.
    """

    config: SparsityConfig
    masks: dict[str, Tensor]
    sparsity: dict[str, float]
    targeted_modules: list[str] = field(default_factory=list)

    def save(self, out_dir: Path, model: nn.Module, tokenizer=None, *, parent: str | None = None,
             extra_metrics: dict | None = None, **stage_extra) -> Path:
        """Write the stage atomically: HF `save_pretrained` files, `masks.safetensors`, `stage.json`.

        `stage_extra` goes verbatim into `stage.json` (e.g. the pipeline's fingerprint).
        """
        def write(tmp: Path) -> None:
            model.save_pretrained(tmp)
            if tokenizer is not None:
                tokenizer.save_pretrained(tmp)
            save_masks(self.masks, tmp)

        metrics = {"sparsity": self.sparsity, "mean_sparsity": mean_sparsity(self.sparsity)}
        return save_stage(out_dir, write, stage="sparsify", config=asdict(self.config), parent=parent,
                          metrics={**metrics, **(extra_metrics or {})},
                          targeted_modules=self.targeted_modules, **stage_extra)


def zero_fraction(weight: Tensor) -> float:
    return float((weight == 0).sum()) / weight.numel()


def mean_sparsity(per_layer: dict[str, float]) -> float:
    return sum(per_layer.values()) / max(1, len(per_layer))


def check_nm_fits(targets: dict[str, nn.Module], nm: tuple[int, int] | None) -> None:
    """N:M needs m to divide every targeted layer's input channels; name the first that fails."""
    if not nm:
        return
    n, m = nm
    for fqn, lin in targets.items():
        if lin.in_features % m:
            raise ConfigError(
                f"`sparsify.nm`={[n, m]}: m={m} does not divide in_features={lin.in_features} "
                f"of `{fqn}`; use an m that divides it or drop the layer from target_modules."
            )


@torch.no_grad()
def sparsify_(
    model: nn.Module, config: SparsityConfig, *, calib: Tensor, batch_size: int = 8,
    progress: bool = True,
) -> SparsityResult:
    """Prune the targeted Linear layers in place with Wanda; return the stored masks.

    Args:
        model: a HF causal LM (fp32) on CPU or XPU.
        config: what to prune and how much.
        calib: (N, T) long token ids from the task's train text.
        batch_size: calibration sequences per forward.

    Example:
        >>> res = sparsify_(model, SparsityConfig(sparsity=0.5), calib=ids)  # doctest: +SKIP
        >>> res.save(Path("runs/x/sparsify"), model, tokenizer)               # doctest: +SKIP
    """
    targets = find_targets(model, config.target_modules, what="sparsify.target_modules")
    check_nm_fits(targets, config.nm)
    masks: dict[str, Tensor] = {}
    sparsity: dict[str, float] = {}
    for layers, norms in blockwise(model, targets, calib, stats=input_norms,
                                   batch_size=batch_size, desc="wanda", progress=progress):
        for fqn, lin in layers.items():
            keep = wanda_mask(lin.weight, norms.sums[fqn], sparsity=config.sparsity, nm=config.nm)
            lin.weight.mul_(keep.to(lin.weight.dtype))
            masks[f"{fqn}.weight"] = keep.cpu()
            sparsity[f"{fqn}.weight"] = zero_fraction(lin.weight)
    return SparsityResult(config, masks, sparsity, sorted(targets))
