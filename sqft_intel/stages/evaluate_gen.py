"""`eval` of a generative task (gsm8k, math500, commonsense): every model variant generates the
same items greedily in torch, the OpenVINO export through OpenVINO GenAI (the deployed artifact
is what gets scored); each variant's per-item records go to OUT/eval/<variant>.jsonl beside the
summary, so a person can read the failures."""

from __future__ import annotations

import logging
import re
import time
from collections import defaultdict

from ..artifacts import load_stage, write_json_atomic
from ..device import resolve_device
from ..evaluation.generate import generate_openvino, generate_torch
from ..evaluation.generative import score_generative, write_records
from ..export.config import MODEL_XML
from ..gen_tasks import GEN_TASKS, GenItem
from ..models import load_model
from ..recipe import Recipe
from ..run_dir import RunDir
from ..sparsity.masks import load_masks

log = logging.getLogger(__name__)

RECORDS_DIR = "eval"  # OUT/eval/<variant>.jsonl


def _by_task(items: list[GenItem]) -> dict[str, list[GenItem]]:
    """Items grouped by the `GEN_TASKS` entry that scores them (commonsense: one per task)."""
    groups: dict[str, list[GenItem]] = defaultdict(list)
    for it in items:
        groups[it.task].append(it)
    return dict(groups)


def _slug(variant: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", variant.lower()).strip("-")


def _score(recipe: Recipe, run_dir: RunDir, name: str, groups, generate) -> dict:
    """Generate every group with `generate(prompts, task)`, score, write the records."""
    t0 = time.perf_counter()
    scores, no_answer, records = {}, {}, []
    for task, items in groups.items():
        gens = generate([it.prompt for it in items], GEN_TASKS[task])
        summary, recs = score_generative(GEN_TASKS[task], items, gens)
        scores[task], no_answer[task] = summary["accuracy"], summary["no_answer"]
        records += recs
    path = run_dir.root / RECORDS_DIR / f"{_slug(name)}.jsonl"
    write_records(path, records)
    primary = [s[GEN_TASKS[t].metrics[0]] for t, s in scores.items()]  # the task's first metric
    return {"variant": name, "acc": sum(primary) / len(primary), "scores": scores,
            "no_answer": no_answer, "n": len(records), "seconds": time.perf_counter() - t0,
            "records": str(path.relative_to(run_dir.root))}


def _budget(recipe: Recipe, task) -> int:
    return recipe.eval.max_new_tokens or task.max_new_tokens


def run(recipe: Recipe, run_dir: RunDir, variants: list[tuple[str, str]]) -> dict:
    """Score `variants` ((name, model folder) pairs) and the export by generation; OUT/summary.json."""
    items = recipe.splits.eval
    groups = _by_task(items)
    masks = load_masks(run_dir.sparsify)
    device = resolve_device(recipe.finetune.train.device)
    rows = []
    for name, source in variants:
        log.info("eval: %s generates %d %s items", name, len(items), recipe.data.task)
        model, tok = load_model(source, trust_remote_code=recipe.model.trust_remote_code)
        model.to(device).eval()
        params = dict(model.named_parameters())
        zeros = sum(int((params[n] == 0).sum()) for n in masks)
        total = sum(params[n].numel() for n in masks)

        def generate(prompts, task, model=model, tok=tok):
            return generate_torch(model, tok, prompts, max_new_tokens=_budget(recipe, task),
                                  stop=task.stop, batch_size=recipe.eval.batch_size, progress=False)

        row = _score(recipe, run_dir, name, groups, generate)
        rows.append({**row, "source": source, "backend": "torch (fp32)",
                     "sparsity": zeros / max(1, total)})
        del model
    if (run_dir.export / MODEL_XML).is_file():
        load_stage(run_dir.export, expect="export")
        log.info("eval: the OpenVINO export generates %d items (GenAI)", len(items))

        def generate_ov(prompts, task):
            return generate_openvino(run_dir.export, prompts, max_new_tokens=_budget(recipe, task),
                                     stop=task.stop)

        row = _score(recipe, run_dir, "openvino export", groups, generate_ov)
        rows.append({**row, "source": str(run_dir.export), "backend": "OpenVINO GenAI",
                     "sparsity": rows[-1]["sparsity"] if rows else None})
    merge = load_stage(run_dir.merge, expect="merge").metrics
    finetune = load_stage(run_dir.finetune, expect="finetune").metrics
    summary = {
        "task": recipe.data.task,
        "generative": True,
        "eval_items": len(items),
        "metrics": {t: list(GEN_TASKS[t].metrics) for t in groups},
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


def format_table(summary: dict) -> str:
    """One line per variant: each task's metrics (commonsense: the tasks, then their mean)."""
    tasks = summary["metrics"]
    cols = [(t, m) for t, ms in tasks.items() for m in ms]
    head = [f"{m if len(tasks) == 1 else t.removeprefix('commonsense_')}" for t, m in cols]
    lines = [f"\n{summary['task']} by generation ({summary['eval_items']} items, greedy; "
             f"records in {RECORDS_DIR}/)",
             f"{'variant':<40} {'sparsity':>9} " + " ".join(f"{h:>16}" for h in head)
             + ("" if len(tasks) == 1 else f" {'mean':>7}")]
    for r in summary["rows"]:
        vals = " ".join(f"{r['scores'][t][m]:>16.1%}" for t, m in cols)
        sp = "" if r.get("sparsity") is None else f"{r['sparsity']:.1%}"
        lines.append(f"{r['variant']:<40} {sp:>9} {vals}"
                     + ("" if len(tasks) == 1 else f" {r['acc']:>7.1%}"))
    m = summary["merge"]
    lines.append(f"merge ({m['method']}): {m['total_new_nonzeros']} new nonzeros")
    return "\n".join(lines)
