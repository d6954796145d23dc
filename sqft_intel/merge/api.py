"""`merge_`: fold the active sub-adapters into the base weights, without a single new nonzero."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ..adapters.api import adapter_modules
from ..errors import ArtifactError, ConfigError
from ..sparsity.masks import check_weight_fits_mask
from ..targets import replace_module
from .config import MergeConfig, MergeMethod, check_method_fits


@dataclass
class MergeResult:
    """What `merge_` did, per merged weight name.

    Attributes:
        sparsity: fraction of exact zeros after the merge.
        new_nonzeros: nonzeros where the mask says pruned (0 for a SparsePEFT merge).
        unmasked_density: the density a plain (unmasked) LoRA merge of the same adapter gives.
    """

    method: MergeMethod
    ranks: dict[str, int]
    sparsity: dict[str, float] = field(default_factory=dict)
    new_nonzeros: dict[str, int] = field(default_factory=dict)
    unmasked_density: dict[str, float] = field(default_factory=dict)
    targeted_modules: list[str] = field(default_factory=list)

    def metrics(self) -> dict:
        n = max(1, len(self.sparsity))
        return {
            "method": self.method,
            "ranks": self.ranks,
            "mean_sparsity": sum(self.sparsity.values()) / n,
            "total_new_nonzeros": sum(self.new_nonzeros.values()),
            "mean_unmasked_density": sum(self.unmasked_density.values()) / n,
            "sparsity": self.sparsity,
            "new_nonzeros": self.new_nonzeros,
            "unmasked_density": self.unmasked_density,
        }



@torch.no_grad()
def merge_(
    model: nn.Module, *, masks: dict[str, Tensor] | None = None, method: MergeMethod = "sparsepeft"
) -> MergeResult:
    """Fold each adapter at its active rank into its base weight and put the plain Linear back.

    `sparsepeft`: W' = W + (s·B_r A_r) ⊙ M (SQFT Eq. 3): the same function the SparsePEFT forward
    computed, zero wherever M is. `lora`: W' = W + s·B_r A_r, which refills pruned weights; kept
    so a report can show what a plain merge does to sparsity.

    Args:
        masks: weight name -> keep-mask; defaults to the masks the adapters carry.

    Raises:
        ConfigError: an unknown method, `lora` on QA-SparsePEFT adapters (their merge is always
            the exact INT4 one), or `sparsepeft` without a mask for some adapter.
        ArtifactError: the merged weight is not finite, or the base is nonzero where M is False
            (the masks belong to another model).

    Example:
        >>> set_active_ranks_(model, "heuristic"); res = merge_(model)  # doctest: +SKIP
    """
    MergeConfig(method=method)  # validates the method
    mods = adapter_modules(model)
    if not mods:
        raise ConfigError("the model has no sqft adapters to merge.")
    check_method_fits(method, quantization_aware=any(m.qa_base is not None for m in mods.values()))
    result = MergeResult(method, {m.group: m.active_rank for m in mods.values()},
                         targeted_modules=sorted(mods))
    from ..quantization.modules import Int4Linear

    for fqn, m in mods.items():
        name = f"{fqn}.weight"
        if m.qa_base is not None:  # QA-SparsePEFT: INT4 merge on the base's own grid
            result.new_nonzeros[name], result.sparsity[name], result.unmasked_density[name] = \
                _merge_int4(model, fqn, m)
            continue
        if isinstance(m.base, Int4Linear):
            raise ConfigError(
                f"`{fqn}` adapts an INT4 base without QA ('sqft' mode): merging would leave the "
                "INT4 grid; keep those adapters unmerged or train with mode 'qa-sparsepeft'."
            )
        w = m.base.weight  # (out, in)
        r = m.active_rank
        delta = (m.lora_B[:, :r].float() @ m.lora_A[:r].float()) * m.scaling  # (out, in) fp32
        mask = masks.get(name) if masks is not None else m.mask
        if mask is not None:
            mask = mask.to(device=w.device, dtype=torch.bool)
        if method == "sparsepeft":
            if mask is None:
                raise ConfigError(f"SparsePEFT merge of `{fqn}` needs its mask; pass `masks=`.")
            check_weight_fits_mask(name, w, mask)
            merged = w.float() + delta * mask
        else:
            merged = w.float() + delta
        if not torch.isfinite(merged).all():
            raise ArtifactError(f"merging `{fqn}` produced non-finite weights; adapters diverged.")
        unmasked = w.float() + delta
        result.unmasked_density[name] = float((unmasked != 0).sum()) / unmasked.numel()
        w.copy_(merged.to(w.dtype))
        result.sparsity[name] = float((w == 0).sum()) / w.numel()
        result.new_nonzeros[name] = int((w[~mask] != 0).sum()) if mask is not None else 0
        m.base.requires_grad_(False)
        replace_module(model, fqn, m.base)
    return result


def _merge_int4(model: nn.Module, fqn: str, m) -> tuple[int, float, float]:
    """q' = clamp(round((W̃ + ΔW⊙M)/σ) + z, 0, 15) with the base's z and σ (SQFT Eq. 5); with
    learned scales, σ is the trained one as fp16, which is what the forward used.

    The same fp32 arithmetic as the trained forward (`qa_target`), so q' equals the integers the
    fake-quant forward used. Returns (new nonzeros, sparsity, unmasked density).
    """
    from ..quantization.fake_quant import qa_integers
    from ..quantization.modules import Int4Linear

    base = m.base
    target = m.qa_target()
    if not torch.isfinite(target).all():
        raise ArtifactError(f"merging `{fqn}` produced non-finite weights; adapters diverged.")
    scales = m.grid_scales().detach().half()  # exact: grid_scales is fp16-valued
    if not torch.isfinite(scales).all():
        raise ArtifactError(f"merging `{fqn}`: learned scales are not finite; training diverged.")
    q = qa_integers(target, scales, base.zeros)
    merged = Int4Linear.from_quantized(q, scales, base.zeros, base.bias)
    deq = merged.dequantized_weight()
    keep = m.mask.to(deq.device)
    unmasked = m.qa_base + (m.lora_B[:, :m.active_rank].float() @ m.lora_A[:m.active_rank].float()
                            ) * m.scaling
    replace_module(model, fqn, merged)
    return (int((deq[~keep] != 0).sum()), float((deq == 0).sum()) / deq.numel(),
            float((unmasked != 0).sum()) / unmasked.numel())
