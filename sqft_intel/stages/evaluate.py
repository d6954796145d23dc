"""`eval`: the accuracy table of a run (built-in scorer: dense, sparse, INT4, merged) or
lm-evaluation-harness on the merged model, the unmerged adapters and the OpenVINO export."""

from __future__ import annotations

import logging
import shutil
import time

from .. import data
from ..adapters.api import set_active_ranks_
from ..artifacts import load_stage, write_json_atomic
from ..device import resolve_device, resolve_precision
from ..errors import ConfigError
from ..evaluation.scoring import score_mc
from ..export.config import MODEL_XML
from ..models import load_model
from ..recipe import Recipe
from ..run_dir import RunDir
from ..sparsity.masks import load_masks
from .check import CheckContext
from .finetune import load_trained
from .select import selected_ranks

log = logging.getLogger(__name__)


def check(recipe: Recipe, ctx: CheckContext) -> None:
    """There are items to score; lm-eval is installed and knows every task asked for."""
    if not recipe.splits.eval:
        raise ConfigError("the evaluation data is empty; check `data.eval_file`.")
    if recipe.splits.generative:
        if recipe.eval.harness == "lm-eval":
            raise ConfigError(f"`eval.harness`='lm-eval' scores multiple-choice tasks; "
                              f"`data.task`={recipe.data.task!r} is scored by generation with the "
                              "built-in harness (torch and the OpenVINO export): use 'builtin'.")
        if recipe.eval.prompt_format != "plain":
            raise ConfigError(f"`eval.prompt_format`={recipe.eval.prompt_format!r} renders "
                              "multiple-choice queries; a generative task's prompts are its own. "
                              "Use 'plain'.")
    if recipe.eval.harness != "lm-eval":
        return
    from ..evaluation.harness import require_lm_eval

    require_lm_eval()
    others = [t for t in recipe.eval.tasks if t not in data.TASKS and t != recipe.data.task]
    if others:
        from lm_eval.tasks import TaskManager

        known = set(TaskManager(verbosity="ERROR").all_tasks)
        unknown = [t for t in others if t not in known]
        if unknown:
            import difflib

            close = difflib.get_close_matches(unknown[0], sorted(known | set(data.TASKS)), n=1)
            raise ConfigError(f"`eval.tasks` {unknown} are neither bundled ({sorted(data.TASKS)}) "
                              "nor lm-eval tasks" + (f"; did you mean {close[0]!r}?" if close else "."))


def run(recipe: Recipe, run_dir: RunDir) -> dict:
    """The accuracy table (built-in scorer, OUT/summary.json), or lm-eval (OUT/lm_eval.json)."""
    if recipe.eval.harness == "lm-eval":
        return run_lm_eval(recipe, run_dir)
    if recipe.splits.generative:
        from . import evaluate_gen

        return evaluate_gen.run(recipe, run_dir, variants(recipe, run_dir))
    items = recipe.splits.eval
    masks = load_masks(run_dir.sparsify)
    rows = []
    for name, source in variants(recipe, run_dir):
        log.info("eval: %s on %d %s validation items", name, len(items), recipe.data.task)
        rows.append({"variant": name, "source": source, **evaluate_dir(recipe, source, items, masks)})
    merge = load_stage(run_dir.merge, expect="merge").metrics
    finetune = load_stage(run_dir.finetune, expect="finetune").metrics
    summary = {
        "task": recipe.data.task,
        "eval_items": len(items),
        "prompt_format": recipe.eval.prompt_format,
        "train_prompt_format": recipe.splits.prompt_format,
        "rows": rows,
        "merge": {k: merge[k] for k in ("method", "mean_sparsity", "total_new_nonzeros",
                                         "mean_unmasked_density")},
        "finetune": {k: finetune.get(k) for k in ("final_loss", "seconds", "seconds_per_step",
                                                  "precision")},
        "recipe": recipe.raw,
    }
    write_json_atomic(run_dir.summary, summary)
    print(format_table(summary), flush=True)
    return summary


def variants(recipe: Recipe, run_dir: RunDir) -> list[tuple[str, str]]:
    """(name, model folder or hub id) of every model a run scores: dense, sparse, INT4, merged."""
    sparse = f"sparse ({recipe.sparsify.target_sparsity:.0%} wanda)"
    out = [("dense", recipe.model.name_or_path), (sparse, str(run_dir.sparsify))]
    mode = recipe.finetune.adapters.mode
    if recipe.finetune.adapters.quantized_base:
        q = recipe.quantize
        out.append((f"{sparse[:-1]}, INT4 {q.method} g{q.group_size})", str(run_dir.quantize)))
    int4 = " INT4" if mode == "qa-sparsepeft" else ""
    out.append((f"sparse + NLS {mode}, merged{int4}", str(run_dir.merge)))
    return out


def evaluate_dir(recipe: Recipe, source: str, items, masks) -> dict:
    """Accuracy and sparsity of the model saved in `source` (a model folder or hub id)."""
    model, tok = load_model(source, trust_remote_code=recipe.model.trust_remote_code)
    device = resolve_device(recipe.finetune.train.device)
    dtype = resolve_precision(recipe.eval.precision, device)
    model.to(device)
    params = dict(model.named_parameters())
    zeros = sum(int((params[n] == 0).sum()) for n in masks)
    total = sum(params[n].numel() for n in masks)
    t0 = time.perf_counter()
    score = score_mc(model, tok, items, batch_size=recipe.eval.batch_size, device=device,
                     dtype=dtype, packed=recipe.eval.packed, progress=False)
    return {"acc": score.acc, "acc_norm": score.acc_norm, "n": score.n,
            "sparsity": zeros / max(1, total), "seconds": time.perf_counter() - t0,
            "precision": str(dtype).removeprefix("torch.")}


def run_lm_eval(recipe: Recipe, run_dir: RunDir) -> dict:
    """lm-evaluation-harness on the run's merged model, its base + unmerged adapters (at the
    selected ranks) and its OpenVINO export, over the same items for each."""
    from ..evaluation import harness

    tasks = list(recipe.eval.tasks) or [recipe.data.task]
    items = {t: recipe.splits.eval if t == recipe.data.task else
             data.subsample(data.load_val_items(t), recipe.eval.items, recipe.eval.seed)
             for t in tasks if t in data.TASKS or t == recipe.data.task}
    work = run_dir.lm_eval_work
    bs = recipe.eval.batch_size
    variants = {}

    def evaluate(name, lm):
        log.info("eval (lm-eval): %s on %s", name, tasks)
        variants[name] = harness.scores(harness.run_harness(lm, tasks, items, work / "tasks",
                                                            limit=recipe.eval.items))

    merged, tok = load_model(str(run_dir.merge), trust_remote_code=recipe.model.trust_remote_code)
    evaluate("merged", harness.harness_lm(merged.eval(), tok, batch_size=bs))
    del merged
    unmerged, tok, _ = load_trained(recipe, run_dir)
    set_active_ranks_(unmerged, selected_ranks(run_dir))
    evaluate("base + adapters (unmerged)", harness.harness_lm(unmerged.eval(), tok, batch_size=bs))
    del unmerged
    if (run_dir.export / MODEL_XML).is_file():
        load_stage(run_dir.export, expect="export")
        evaluate("openvino", harness.harness_lm(openvino_dir=run_dir.export, work=work, batch_size=bs))
    shutil.rmtree(work, ignore_errors=True)
    result = {"harness": "lm-eval", "tasks": tasks, "items": recipe.eval.items, "variants": variants}
    write_json_atomic(run_dir.lm_eval, result)
    lines = [f"\nlm-eval (zero-shot; {recipe.eval.items or 'all'} items per task)",
             f"{'variant':<30} {'task':<16} {'acc':>7} {'acc_norm':>9} {'n':>6}"]
    for name, per_task in variants.items():
        for t, r in per_task.items():
            lines.append(f"{name:<30} {t:<16} {r['acc']:>7.1%} {r['acc_norm']:>9.1%} {r['n'] or '':>6}")
    print("\n".join(lines), flush=True)
    return result


def format_table(summary: dict) -> str:
    fmt = summary.get("prompt_format", "plain")
    lines = [f"\n{summary['task']} validation accuracy ({summary['eval_items']} items, {fmt} "
             "prompts, log-likelihood of each choice)",
             f"{'variant':<40} {'sparsity':>9} {'acc':>7} {'acc_norm':>9}"]
    for r in summary["rows"]:
        lines.append(f"{r['variant']:<40} {r['sparsity']:>9.1%} {r['acc']:>7.1%} "
                     f"{r['acc_norm']:>9.1%}")
    m = summary["merge"]
    qa = summary.get("recipe", {}).get("finetune", {}).get("mode") == "qa-sparsepeft"
    learned = summary.get("recipe", {}).get("finetune", {}).get("learn_scales", False)
    grid = "the base's zero points, trained scales" if learned else "the base grid"
    kind = f"INT4 on {grid}, masked" if qa else m["method"]
    lines.append(f"merge ({kind}): {m['total_new_nonzeros']} new nonzeros; a plain LoRA "
                 f"merge of the same adapters would leave the layers {m['mean_unmasked_density']:.1%}"
                 " dense")
    return "\n".join(lines)
