"""Stage `export`: the merged model as OpenVINO IR (exact INT4, FP16 or sparse INT8)."""

from __future__ import annotations

import importlib.util
import logging
import time

from .. import data
from ..errors import ConfigError
from ..recipe import Recipe
from ..run_dir import RunDir
from .check import CheckContext

log = logging.getLogger(__name__)

OPENVINO_MODULES = ("openvino", "nncf", "optimum.intel", "openvino_genai", "openvino_tokenizers")


def check(recipe: Recipe, ctx: CheckContext) -> None:
    """The OpenVINO extra is installed and the format is one the merge can give."""
    if "export" not in ctx.running:
        return
    missing = [m for m in OPENVINO_MODULES if importlib.util.find_spec(m.split(".")[0]) is None]
    if missing:
        raise ConfigError(f"the export stage needs {missing}: install `sqft-intel[openvino]` (the "
                          "README's set-up does), or set `export.enabled: false`.")
    mode = recipe.finetune.adapters.mode
    if recipe.export.format == "int4" and mode != "qa-sparsepeft":
        raise ConfigError(f"`export.format`='int4' needs an INT4 merge, which only mode "
                          f"'qa-sparsepeft' gives (mode is {mode!r}); use format 'fp16' or "
                          "'sparse-int8', or train with mode 'qa-sparsepeft'.")


def run(recipe: Recipe, run_dir: RunDir, *, parent: str | None, fingerprint: str,
        progress: bool = True) -> None:
    from ..export.api import export_

    t0 = time.perf_counter()
    texts = data.calibration_texts(recipe.splits.train)[:64] \
        if recipe.export.format == "sparse-int8" else None
    fmt = export_(run_dir.stage(parent), run_dir.export, recipe.export, fingerprint=fingerprint,
                  calib_texts=texts)
    log.info("export: %s OpenVINO IR in %.0fs -> %s", fmt, time.perf_counter() - t0, run_dir.export)
