"""`sqft run`: check the whole recipe, then walk the stage chain on disk, then evaluate and verify.

Each stage reads its parent's folder and writes its own atomically. A stage whose folder already
holds the same inputs (fingerprint of its recipe sections and its parent's fingerprint) is reused,
so rerunning after a crash redoes only what is missing; fine-tuning resumes from its checkpoints.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path

from . import stages
from .artifacts import load_stage
from .errors import ConfigError
from .models import load_config, meta_model
from .recipe import Recipe
from .run_dir import RunDir

log = logging.getLogger(__name__)

_WRITE_MODELS = {"sparsify", "quantize", "merge", "export"}


def validate(recipe: Recipe, running: tuple[str, ...] | None = None, out: Path | None = None) -> None:
    """Everything checkable without loading weights, for the stages in `running` (default: the
    recipe's whole chain) and the recipe's consistency; with `out`, a writable output directory
    with room on disk and in memory for the model.

    Raises ConfigError/UnsupportedModelError before a single file is written.
    """
    from .run_data import check_task

    names = tuple(s.name for s in stages.chain(recipe)) if running is None else running
    if not recipe.data.train_file or not recipe.data.eval_file:
        check_task(recipe.data.task)
    config = load_config(recipe.model.name_or_path, trust_remote_code=recipe.model.trust_remote_code)
    skeleton = meta_model(config)
    if out is not None:
        from .resources import check_resources

        check_resources(out, sum(p.numel() for p in skeleton.parameters()),
                        stages_writing_models=max(1, len(_WRITE_MODELS & set(names))))
    ctx = stages.CheckContext(skeleton=skeleton, running=frozenset(names))
    for stage in stages.STAGES:
        stage.check(recipe, ctx)
    stages.evaluate.check(recipe, ctx)


def fingerprint(recipe: Recipe, name: str, run_dir: RunDir) -> str:
    """Hash of the recipe sections a stage depends on and its parent's fingerprint."""
    parts = {s: recipe.raw[s] for s in stages.BY_NAME[name].sections}
    parent = stages.parent_of(recipe, name)
    if parent:
        # only the recorded fingerprint is read: the parent's files are verified when loaded
        parts["parent"] = load_stage(run_dir.stage(parent), expect=parent,
                                     verify=False).raw.get("fingerprint")
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def _up_to_date(run_dir: RunDir, name: str, fp: str) -> bool:
    try:
        return load_stage(run_dir.stage(name), expect=name).raw.get("fingerprint") == fp
    except Exception:  # absent, incomplete or foreign: recompute
        return False


def run_stage(recipe: Recipe, out: Path, name: str, *, progress: bool = True) -> None:
    """Run one stage of the chain into OUT (reused when its folder holds the same inputs)."""
    run_dir = RunDir(out)
    fp = fingerprint(recipe, name, run_dir)
    if _up_to_date(run_dir, name, fp):
        log.info("%s: up to date in %s", name, run_dir.stage(name))
        return
    stages.BY_NAME[name].run(recipe, run_dir, parent=stages.parent_of(recipe, name),
                             fingerprint=fp, progress=progress)


def run_eval(recipe: Recipe, out: Path) -> dict:
    """`sqft eval`: the accuracy table (OUT/summary.json) or lm-eval (OUT/lm_eval.json)."""
    return stages.evaluate.run(recipe, RunDir(out))


def run_pipeline(recipe: Recipe, out: Path, *, progress: bool = True) -> dict:
    """Validate, run the chain, evaluate, verify the export and generate; returns the summary."""
    from .finetune.distributed import launched
    from .report import write_report

    if launched():
        raise ConfigError("`sqft run` under torchrun/accelerate would run every stage on every "
                          "rank; run the other stages in one process and launch only "
                          "`sqft finetune` on several ranks.")
    validate(recipe, out=out)
    t0 = time.perf_counter()
    for stage in stages.chain(recipe):
        run_stage(recipe, out, stage.name, progress=progress)
    summary = run_eval(recipe, out)
    if recipe.export.enabled:
        stages.verify.run(recipe, RunDir(out))
    log.info("done in %.0fs; summary in %s, report in %s", time.perf_counter() - t0,
             RunDir(out).summary, write_report(out))
    return summary
