"""`quantize_`: INT4 weight-only quantization of the sparse base, without losing one zero."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..artifacts import save_stage
from ..errors import ConfigError
from ..sparsity.calibrate import blockwise, input_hessians
from ..sparsity.masks import check_weight_fits_mask, save_masks
from ..targets import find_targets, replace_module
from .config import Int4Config
from .gptq import gptq_quantize
from .int4 import dequantize, group_params, quantize, resolve_group
from .modules import Int4Linear
from .storage import save_model_dir


@dataclass
class QuantizationResult:
    """What `quantize_` did.

    Attributes:
        group_sizes: weight name -> group size used (differs from the config only by fallback).
        sparsity: weight name -> fraction of q == z (exact zeros) after quantization.
        new_nonzeros: weight name -> dequantized nonzeros where the mask is False (always 0).
        rel_error: weight name -> ‖Q(W) - W‖_F / ‖W‖_F.
    """

    config: Int4Config
    group_sizes: dict[str, int] = field(default_factory=dict)
    sparsity: dict[str, float] = field(default_factory=dict)
    new_nonzeros: dict[str, int] = field(default_factory=dict)
    rel_error: dict[str, float] = field(default_factory=dict)
    targeted_modules: list[str] = field(default_factory=list)

    def metrics(self) -> dict:
        n = max(1, len(self.sparsity))
        return {"mean_sparsity": sum(self.sparsity.values()) / n,
                "total_new_nonzeros": sum(self.new_nonzeros.values()),
                "mean_rel_error": sum(self.rel_error.values()) / n,
                "group_sizes": self.group_sizes, "sparsity": self.sparsity,
                "rel_error": self.rel_error}

    def save(self, out_dir: Path, model: nn.Module, tokenizer=None, *,
             masks: dict[str, Tensor] | None = None, parent: str | None = None, **stage_extra) -> Path:
        """Write the stage atomically: `int4.safetensors` (qweight/scales/zeros per weight), HF
        files holding Q(W), the sparsify masks when given, and `stage.json`."""
        def write(tmp: Path) -> None:
            save_model_dir(model, tokenizer, tmp)
            if masks is not None:
                save_masks(masks, tmp)

        return save_stage(out_dir, write, stage="quantize", config=asdict(self.config),
                          parent=parent, metrics=self.metrics(),
                          targeted_modules=self.targeted_modules, **stage_extra)


def layer_groups(targets: dict[str, nn.Linear], config: Int4Config) -> dict[str, int]:
    """Group size per layer; a non-dividing size fails naming the layer unless fallback is on."""
    out = {}
    for fqn, lin in targets.items():
        g = resolve_group(lin.in_features, config.group_size)
        if lin.in_features % g:
            if not config.per_layer_fallback:
                raise ConfigError(
                    f"`quantize.group_size`={config.group_size} does not divide in_features="
                    f"{lin.in_features} of `{fqn}`; use a divisor of {lin.in_features} (e.g. 64) "
                    "or set `quantize.per_layer_fallback: true`."
                )
            g = max(d for d in range(2, g) if lin.in_features % d == 0 and d % 2 == 0)
        out[f"{fqn}.weight"] = g
    return out


@torch.no_grad()
def quantize_(
    model: nn.Module, config: Int4Config, *, masks: dict[str, Tensor],
    calib: Tensor | None = None, batch_size: int = 8, progress: bool = True,
) -> QuantizationResult:
    """Replace each targeted Linear by an `Int4Linear`; pruned weights stay exactly zero.

    Args:
        masks: weight name -> (out, in) bool keep-mask from the sparsify stage (stored masks,
            never re-derived from W != 0). Every target needs one.
        calib: (N, T) token ids; required for `gptq`. Blocks are processed in order and each
            sees the outputs of the already-quantized blocks before it.

    Raises:
        ConfigError: a group size that does not divide a layer, gptq without calibration data.
        ArtifactError: masks missing for a target, of another shape, or the weight nonzero where
            its mask says pruned.

    Example:
        >>> quantize_(model, Int4Config(method="rtn", group_size=64), masks=masks)  # doctest: +SKIP
    """
    targets = find_targets(model, config.target_modules, what="quantize.target_modules")
    groups = layer_groups(targets, config)
    for fqn, lin in targets.items():
        check_weight_fits_mask(f"{fqn}.weight", lin.weight, masks.get(f"{fqn}.weight"))
    if config.method == "gptq" and calib is None:
        raise ConfigError("`quantize.method`='gptq' needs calibration ids (`calib=`).")
    result = QuantizationResult(config, group_sizes=groups, targeted_modules=sorted(targets))

    def finish(fqn: str, lin: nn.Linear, q: Tensor, s: Tensor, z: Tensor) -> None:
        name = f"{fqn}.weight"
        keep = masks[name].to(q.device)
        W = lin.weight.detach().float()
        deq = dequantize(q, s, z)
        result.sparsity[name] = float((deq == 0).sum()) / deq.numel()
        result.new_nonzeros[name] = int((deq[~keep] != 0).sum())
        assert result.new_nonzeros[name] == 0, "INT4 grid put a nonzero on a pruned weight"
        result.rel_error[name] = float((deq - W).norm() / W.norm().clamp(min=1e-12))
        bias = lin.bias.detach() if lin.bias is not None else None
        replace_module(model, fqn, Int4Linear.from_quantized(q, s, z, bias))

    if config.method == "rtn":
        for fqn, lin in tqdm(targets.items(), desc="rtn", disable=not progress):
            g = groups[f"{fqn}.weight"]
            s, z = group_params(lin.weight, g, sym=config.sym)
            finish(fqn, lin, quantize(lin.weight, s, z), s, z)
        return result

    # later blocks calibrate on the quantized outputs of earlier ones (GPTQ's sequential variant)
    for layers, hess in blockwise(model, targets, calib, stats=input_hessians,
                                  batch_size=batch_size, desc="gptq", progress=progress):
        for fqn, lin in layers.items():
            name = f"{fqn}.weight"
            q, s, z = gptq_quantize(lin.weight, hess.sums[fqn], masks[name], group=groups[name],
                                    sym=config.sym, damp=config.damp, act_order=config.act_order)
            finish(fqn, lin, q, s, z)
    return result
