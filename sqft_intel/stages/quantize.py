"""Stage `quantize`: INT4 (rtn or mask-aware gptq) of the sparse model, every zero kept."""

from __future__ import annotations

import logging
import time

from ..artifacts import load_model_stage
from ..quantization.api import layer_groups, quantize_
from ..recipe import Recipe
from ..run_dir import RunDir
from ..targets import find_targets
from .check import CheckContext, require_calibration_text, require_covered, require_train_items

log = logging.getLogger(__name__)


def check(recipe: Recipe, ctx: CheckContext) -> None:
    """Targets exist, the group size divides each (or falls back), and every one has a mask."""
    if "quantize" not in ctx.running:
        return
    targets = find_targets(ctx.skeleton, recipe.quantize.target_modules,
                           what="quantize.target_modules")
    layer_groups(targets, recipe.quantize)  # a group size that does not divide a layer fails here
    require_covered(targets, recipe.sparsify.target_modules, "`quantize.target_modules` include",
                    "sparsify does not prune (no mask to keep)", "sparsify")
    require_train_items(recipe)
    if recipe.quantize.method == "gptq":
        require_calibration_text(recipe, recipe.quantize)


def run(recipe: Recipe, run_dir: RunDir, *, parent: str | None, fingerprint: str,
        progress: bool = True) -> None:
    cfg = recipe.quantize
    model, tok, masks = load_model_stage(run_dir.stage(parent), parent)
    calib = recipe.splits.calibration_ids(tok, cfg) if cfg.method == "gptq" else None
    t0 = time.perf_counter()
    res = quantize_(model, cfg, masks=masks, calib=calib, progress=progress)
    seconds = time.perf_counter() - t0
    res.save(run_dir.quantize, model, tok, masks=masks, parent=parent, fingerprint=fingerprint)
    m = res.metrics()
    log.info("quantize: %s INT4 g%d on %d layers in %.1fs, mean sparsity %.2f%%, new nonzeros %d, "
             "mean relative weight error %.4f -> %s", cfg.method, cfg.group_size,
             len(res.targeted_modules), seconds, 100 * m["mean_sparsity"],
             m["total_new_nonzeros"], m["mean_rel_error"], run_dir.quantize)
