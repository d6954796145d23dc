"""Stage `merge`: the selected sub-adapter folded into the sparse (FP or INT4) base, exactly."""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path

from ..adapters.api import set_active_ranks_
from ..artifacts import save_stage
from ..errors import ConfigError
from ..merge.api import merge_
from ..merge.config import check_method_fits
from ..quantization.storage import save_model_dir
from ..recipe import Recipe
from ..run_dir import RunDir
from ..sparsity.masks import save_masks
from .check import CheckContext
from .finetune import load_trained
from .select import selected_ranks

log = logging.getLogger(__name__)


def check(recipe: Recipe, ctx: CheckContext) -> None:
    """The adapters' mode has a merge, and the method is one it allows."""
    mode = recipe.finetune.adapters.mode
    if "merge" in ctx.running and mode == "sqft":
        raise ConfigError(
            "`finetune.mode`='sqft' keeps its adapters unmerged on the INT4 base, so `sqft run` "
            "cannot merge it; use mode 'qa-sparsepeft' for a mergeable INT4 model, or run the "
            "stages sparsify, quantize, finetune, select one by one."
        )
    check_method_fits(recipe.merge.method, quantization_aware=mode == "qa-sparsepeft")


def run(recipe: Recipe, run_dir: RunDir, *, parent: str | None, fingerprint: str,
        progress: bool = True) -> None:
    model, tok, masks = load_trained(recipe, run_dir)
    set_active_ranks_(model, selected_ranks(run_dir))
    res = merge_(model, masks=masks, method=recipe.merge.method)

    def write(tmp: Path) -> None:
        save_model_dir(model, tok, tmp)
        save_masks(masks, tmp)

    m = res.metrics()
    save_stage(run_dir.merge, write, stage="merge", parent=parent, config=asdict(recipe.merge),
               metrics=m, targeted_modules=res.targeted_modules, fingerprint=fingerprint)
    adapters = recipe.finetune.adapters
    grid = "the base's zero points, trained scales" if adapters.trains_scales else "the base grid"
    kind = f"INT4 on {grid} (qa-sparsepeft)" if adapters.mode == "qa-sparsepeft" else recipe.merge.method
    log.info("merge: %s, mean sparsity %.2f%%, new nonzeros %d (an unmasked LoRA merge would be "
             "%.2f%% dense) -> %s", kind, 100 * m["mean_sparsity"], m["total_new_nonzeros"],
             100 * m["mean_unmasked_density"], run_dir.merge)
