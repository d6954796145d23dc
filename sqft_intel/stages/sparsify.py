"""Stage `sparsify`: Wanda masks on the recipe's model; writes the sparse model and its masks."""

from __future__ import annotations

import logging
import time

from ..models import load_model
from ..recipe import Recipe
from ..run_dir import RunDir
from ..sparsity.api import check_nm_fits, sparsify_
from ..targets import find_targets
from .check import CheckContext, require_calibration_text, require_train_items

log = logging.getLogger(__name__)


def check(recipe: Recipe, ctx: CheckContext) -> None:
    """Targets exist, N:M divides every targeted layer, and (when it runs) there is train text."""
    targets = find_targets(ctx.skeleton, recipe.sparsify.target_modules,
                           what="sparsify.target_modules")
    check_nm_fits(targets, recipe.sparsify.nm)
    if "sparsify" in ctx.running:
        require_train_items(recipe)
        require_calibration_text(recipe, recipe.sparsify)


def run(recipe: Recipe, run_dir: RunDir, *, parent: str | None, fingerprint: str,
        progress: bool = True) -> None:
    model, tok = load_model(recipe.model.name_or_path,
                            trust_remote_code=recipe.model.trust_remote_code)
    calib = recipe.splits.calibration_ids(tok, recipe.sparsify)
    if recipe.finetune.adapters.quantized_base and recipe.quantize.method == "gptq":
        recipe.splits.calibration_ids(tok, recipe.quantize)  # enough text for GPTQ too, before any work
    t0 = time.perf_counter()
    res = sparsify_(model, recipe.sparsify, calib=calib, progress=progress)
    seconds = time.perf_counter() - t0
    res.save(run_dir.sparsify, model, tok, parent=parent, extra_metrics={"seconds": seconds},
             fingerprint=fingerprint, source_model=recipe.model.name_or_path)
    log.info("sparsify: %d layers at %.0f%% in %.1fs -> %s", len(res.masks),
             100 * recipe.sparsify.target_sparsity, seconds, run_dir.sparsify)
