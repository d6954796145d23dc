"""Stage `select`: one sub-adapter of the trained NLS adapters (heuristic, or a search or a few
training-log candidates scored on held-out train items), written in PEFT's format."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path

from ..adapters.api import count_adapter_params, rank_groups, save_peft_adapter, set_active_ranks_
from ..artifacts import load_stage, save_stage
from ..device import resolve_device, resolve_precision
from ..errors import ConfigError
from ..evaluation.scoring import score_mc
from ..recipe import Recipe
from ..run_dir import PARETO_FILE, SEARCH_LOG, TRAIN_LOG, RunDir
from .check import CheckContext
from .finetune import load_trained

log = logging.getLogger(__name__)


def check(recipe: Recipe, ctx: CheckContext) -> None:
    """A search needs held-out items to score on."""
    if "select" in ctx.running and recipe.select.is_search and not recipe.splits.holdout:
        if recipe.splits.train_format != "mc":
            raise ConfigError(
                f"`select.strategy`={recipe.select.strategy!r} scores sub-adapters on held-out "
                f"multiple-choice items, and the training data holds `{recipe.splits.train_format}` "
                "rows (`data.train_file`, or a generative task's own), of which none is held out; "
                "use strategy 'heuristic', 'maximal', 'minimal' or 'custom', or an MC train file.")
        raise ConfigError(f"`select.strategy`={recipe.select.strategy!r} scores sub-adapters on "
                          "held-out train items, and `data.holdout_items` is 0; set it to e.g. 200.")


def run(recipe: Recipe, run_dir: RunDir, *, parent: str | None, fingerprint: str,
        progress: bool = True) -> None:
    cfg = recipe.select
    model, tok, _ = load_trained(recipe, run_dir)
    search = _search(recipe, run_dir, model, tok, progress=progress) if cfg.is_search else None
    ranks = set_active_ranks_(model, search.best.ranks if search else cfg.choice)
    metrics = {"ranks": ranks, "adapter_params": count_adapter_params(model, active=True)}

    def write(tmp: Path) -> None:
        save_peft_adapter(model, tmp, base_model=str(run_dir.sparsify.resolve()),
                          alpha=recipe.finetune.adapters.alpha)
        if search:
            metrics["search"] = _write_search(tmp, recipe, search)

    save_stage(run_dir.select, write, stage="select", parent=parent, config=asdict(cfg),
               metrics=metrics, fingerprint=fingerprint)
    elastic = sorted({r for g, r in ranks.items() if g.endswith(".elastic")})
    found = ""
    if search:
        found = (f" (held-out {cfg.metric} {search.best.score:.1%} vs heuristic "
                 f"{search.start.score:.1%}, {len(search.trials)} configurations)")
    log.info("select: %s -> elastic ranks %s%s -> %s", cfg.strategy, elastic, found, run_dir.select)


def _search(recipe: Recipe, run_dir: RunDir, model, tok, *, progress: bool):
    """Search per-group ranks from the heuristic configuration (or score the training-log
    candidates, `candidates`), scored on the held-out items."""
    from tqdm.auto import tqdm

    from ..search import STRATEGIES, score_candidates

    cfg = recipe.select
    items = recipe.splits.holdout
    device = resolve_device(recipe.finetune.train.device)
    dtype = resolve_precision(recipe.eval.precision, device)
    model.to(device)

    def evaluate(ranks):
        set_active_ranks_(model, ranks)
        s = score_mc(model, tok, items, batch_size=recipe.eval.batch_size, device=device,
                     dtype=dtype, packed=recipe.eval.packed, progress=False)
        return getattr(s, cfg.metric)

    def params(ranks):
        set_active_ranks_(model, ranks)
        return count_adapter_params(model, active=True)

    start = set_active_ranks_(model, "heuristic")
    space = rank_groups(model)
    candidates = _candidates(run_dir, space, start, cfg.budget) \
        if cfg.strategy == "candidates" else None
    total = len(candidates) if candidates else cfg.budget
    log.info("select: %s search, %d configurations scored on %d held-out train items",
             cfg.strategy, total, len(items))
    bar = tqdm(total=total, desc=f"select ({cfg.strategy})", unit="config", disable=not progress)
    best = [float("-inf")]

    def on_trial(t):
        best[0] = max(best[0], t.score)
        bar.set_postfix({cfg.metric: f"{best[0]:.3f}"}, refresh=False)
        bar.update(1)

    match cfg.strategy:
        case "candidates":
            res = score_candidates(candidates, evaluate, params, on_trial=on_trial)
        case "evolution":
            res = STRATEGIES[cfg.strategy](space, start, evaluate, params, budget=cfg.budget,
                                           seed=cfg.seed, on_trial=on_trial,
                                           population=cfg.population)
        case _:
            res = STRATEGIES[cfg.strategy](space, start, evaluate, params, budget=cfg.budget,
                                           seed=cfg.seed, on_trial=on_trial)
    bar.close()
    return res


def _candidates(run_dir: RunDir, space: dict, start: dict, budget: int) -> list:
    """(origin, ranks) read off the finetune stage: heuristic, most-sampled, lowest-loss."""
    from ..search import LOWEST_LOSS, lowest_loss, most_sampled, training_candidates

    rank_counts = load_stage(run_dir.finetune, expect="finetune",
                             verify=False).metrics.get("rank_counts") or {}
    path = run_dir.finetune / TRAIN_LOG
    rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()] \
        if path.is_file() else []
    out = training_candidates(space, start, rows, rank_counts, budget=budget, k=LOWEST_LOSS)
    if not lowest_loss(space, rows):
        log.warning("select: %s holds no logged step with a loss and the ranks of every elastic "
                    "group (%d rows; a run from before ranks were logged?): scoring the heuristic "
                    "and most-sampled configurations only.", path, len(rows))
    if most_sampled(space, rank_counts) is None:
        log.warning("select: the finetune stage.json has no `rank_counts` for every elastic "
                    "group: no most-sampled configuration.")
    log.info("select: candidates %s", ", ".join(origin for origin, _ in out))
    return out


def _write_search(stage: Path, recipe: Recipe, res) -> dict:
    """search_log.jsonl (every configuration tried) and pareto.json; returns the summary."""
    with open(stage / SEARCH_LOG, "w") as f:
        for t in res.trials:
            f.write(json.dumps(t.as_dict()) + "\n")
    front = [t.as_dict() for t in res.pareto()]
    (stage / PARETO_FILE).write_text(json.dumps(front, indent=2) + "\n")
    return {"strategy": recipe.select.strategy, "metric": recipe.select.metric,
            "holdout_items": len(recipe.splits.holdout), "evaluations": len(res.trials),
            "heuristic_score": res.start.score, "best_score": res.best.score,
            "best_index": res.best.index, "pareto_size": len(front)}


def selected_ranks(run_dir: RunDir) -> dict[str, int]:
    """group -> rank of the sub-adapter the select stage chose."""
    return load_stage(run_dir.select, expect="select").metrics["ranks"]
