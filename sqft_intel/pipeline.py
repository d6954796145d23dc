"""The stages chained on disk: each reads its parent's directory and writes its own atomically.

A stage whose directory already holds the same inputs (fingerprint of its recipe sections and its
parent's fingerprint) is reused, so rerunning `sqft run` after a crash redoes only what is missing.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import torch

from . import data as data_mod
from .adapters.api import (
    add_adapters_,
    count_adapter_params,
    load_adapters_,
    save_adapters,
    save_peft_adapter,
    set_active_ranks_,
)
from .artifacts import atomic_dir, load_stage, write_stage_json
from .device import resolve_device, resolve_precision
from .errors import ArtifactError, ConfigError
from .evaluation.scoring import score_mc
from .finetune.loop import finetune_
from .merge.api import merge_
from .models import load_config, load_model, meta_model
from .recipe import Recipe
from .sparsity.api import (
    MASKS_FILE,
    check_masks_match,
    check_nm_fits,
    load_masks,
    save_masks,
    sparsify_,
)
from .targets import find_targets, matches

STAGES = ("sparsify", "quantize", "finetune", "select", "merge", "export")
_PARENT = {"sparsify": None, "quantize": "sparsify", "finetune": "sparsify", "select": "finetune",
           "merge": "select", "export": "merge"}
_DIRS = {"export": "openvino"}  # the stage's directory under OUT, when not its own name


def stage_dir(out: Path, stage: str) -> Path:
    return Path(out) / _DIRS.get(stage, stage)


def stages_for(recipe: Recipe) -> tuple[str, ...]:
    """The chain a recipe runs: `quantize` only when fine-tuning needs the INT4 base, `export`
    unless turned off."""
    skip = set()
    if not recipe.adapters.quantized_base:
        skip.add("quantize")
    if not recipe.export.enabled:
        skip.add("export")
    return tuple(s for s in STAGES if s not in skip)


def parent_of(recipe: Recipe, stage: str) -> str | None:
    if stage == "finetune" and recipe.adapters.quantized_base:
        return "quantize"
    return _PARENT[stage]
_SECTIONS = {
    "sparsify": ("model", "data", "sparsify"),
    "quantize": ("data", "quantize"),
    "finetune": ("data", "finetune"),
    "select": ("data", "select"),
    "merge": ("merge",),
    "export": ("export",),
}


def log(msg: str) -> None:
    print(f"[sqft] {msg}", flush=True)


# ---------------------------------------------------------------- inputs, checked before any work
def _train_split(recipe: Recipe) -> tuple[list[data_mod.MCItem], list[data_mod.MCItem]]:
    """(training items, held-out items): the train split less `data.holdout_items` seeded items."""
    if recipe.data.train_file:
        items = data_mod.load_jsonl(recipe.data.train_file)
    else:
        items = data_mod.load_train_items(recipe.data.task)
    n = min(recipe.data.holdout_items, len(items) // 10)  # never more than a tenth of the data
    train, holdout = data_mod.split_holdout(items, n, avoid=_all_eval_items(recipe) if n else ())
    return data_mod.subsample(train, recipe.train.train_items, recipe.train.seed), holdout


def train_items(recipe: Recipe) -> list[data_mod.MCItem]:
    """What fine-tuning and calibration see: never the held-out or the validation items."""
    return _train_split(recipe)[0]


def holdout_items(recipe: Recipe) -> list[data_mod.MCItem]:
    """Train-split items kept out of training, to score sub-adapters (`select` searches)."""
    return _train_split(recipe)[1]


def _all_eval_items(recipe: Recipe) -> list[data_mod.MCItem]:
    if recipe.data.eval_file:
        return data_mod.load_jsonl(recipe.data.eval_file)
    return data_mod.load_val_items(recipe.data.task)


def eval_items(recipe: Recipe) -> list[data_mod.MCItem]:
    """The items the final numbers come from: the validation split (or `eval.items` of it)."""
    return data_mod.subsample(_all_eval_items(recipe), recipe.eval.items, recipe.eval.seed)


def validate(recipe: Recipe, stages: tuple[str, ...] | None = None, out: Path | None = None) -> None:
    """Everything checkable without loading weights: model source, targets, N:M shapes, data, and
    (with `out`) a writable output directory with room on disk and in memory for the model.

    Raises ConfigError/UnsupportedModelError before a single file is written.
    """
    stages = stages_for(recipe) if stages is None else stages
    if not recipe.data.train_file or not recipe.data.eval_file:
        data_mod.check_task(recipe.data.task)
    config = load_config(recipe.model.name_or_path, trust_remote_code=recipe.model.trust_remote_code)
    skeleton = meta_model(config)
    if out is not None:
        from .resources import check_resources

        writers = len({"sparsify", "quantize", "merge", "export"} & set(stages))
        check_resources(out, sum(p.numel() for p in skeleton.parameters()),
                        stages_writing_models=max(1, writers))
    sparse_t = find_targets(skeleton, recipe.sparsify.target_modules, what="sparsify.target_modules")
    check_nm_fits(sparse_t, recipe.sparsify.nm)
    ft = find_targets(skeleton, recipe.adapters.target_modules, what="finetune.target_modules")
    mode = recipe.adapters.mode
    if recipe.adapters.masked:
        _require_covered(ft, recipe.sparsify.target_modules, f"`finetune.mode`={mode!r} adapts",
                         "sparsify does not prune (no mask)", "sparsify")
    if recipe.adapters.quantized_base:
        _require_covered(ft, recipe.quantize.target_modules, f"`finetune.mode`={mode!r} adapts",
                         "quantize leaves in FP", "quantize")
    if "merge" in stages and mode == "sqft":
        raise ConfigError(
            "`finetune.mode`='sqft' keeps its adapters unmerged on the INT4 base, so `sqft run` "
            "cannot merge it; use mode 'qa-sparsepeft' for a mergeable INT4 model, or run the "
            "stages sparsify, quantize, finetune, select one by one."
        )
    if mode == "qa-sparsepeft" and recipe.merge.method != "sparsepeft":
        raise ConfigError(
            f"`merge.method`={recipe.merge.method!r} with mode 'qa-sparsepeft': the INT4 merge is "
            "always masked on the base's grid; set `merge.method: sparsepeft`."
        )
    if "export" in stages:
        _require_openvino()
        if recipe.export.format == "int4" and mode != "qa-sparsepeft":
            raise ConfigError(f"`export.format`='int4' needs an INT4 merge, which only mode "
                              f"'qa-sparsepeft' gives (mode is {mode!r}); use format 'fp16' or "
                              "'sparse-int8', or train with mode 'qa-sparsepeft'.")
    if "quantize" in stages:
        from .quantization.api import layer_groups

        qt = find_targets(skeleton, recipe.quantize.target_modules, what="quantize.target_modules")
        layer_groups(qt, recipe.quantize)  # a group size that does not divide a layer fails here
        _require_covered(qt, recipe.sparsify.target_modules, "`quantize.target_modules` include",
                         "sparsify does not prune (no mask to keep)", "sparsify")
    if {"sparsify", "quantize", "finetune"} & set(stages):  # they read the train split
        if not train_items(recipe):
            raise ConfigError("the training data is empty; check `data.task` / `data.train_file`.")
    if not eval_items(recipe):
        raise ConfigError("the evaluation data is empty; check `data.eval_file`.")
    if recipe.eval.harness == "lm-eval":
        _check_lm_eval_tasks(recipe)
    if "select" in stages and recipe.select.is_search and not holdout_items(recipe):
        raise ConfigError(f"`select.strategy`={recipe.select.strategy!r} scores sub-adapters on "
                          "held-out train items, and `data.holdout_items` is 0; set it to e.g. 200.")


def _check_lm_eval_tasks(recipe: Recipe) -> None:
    """lm-eval is installed and every task is bundled or in its registry."""
    from .evaluation.harness import require_lm_eval

    require_lm_eval()
    others = [t for t in recipe.eval.tasks if t not in data_mod.TASKS and t != recipe.data.task]
    if others:
        from lm_eval.tasks import TaskManager

        known = set(TaskManager(verbosity="ERROR").all_tasks)
        unknown = [t for t in others if t not in known]
        if unknown:
            import difflib

            close = difflib.get_close_matches(unknown[0], sorted(known | set(data_mod.TASKS)), n=1)
            raise ConfigError(f"`eval.tasks` {unknown} are neither bundled ({sorted(data_mod.TASKS)}) "
                              "nor lm-eval tasks" + (f"; did you mean {close[0]!r}?" if close else "."))


def _require_openvino() -> None:
    import importlib.util

    missing = [m for m in ("openvino", "nncf", "optimum.intel", "openvino_genai", "openvino_tokenizers")
               if importlib.util.find_spec(m.split(".")[0]) is None]
    if missing:
        raise ConfigError(f"the export stage needs {missing}: install `sqft-intel[openvino]` (the "
                          "README's set-up does), or set `export.enabled: false`.")


def _require_covered(targets, suffixes: tuple[str, ...], who: str, why: str, section: str) -> None:
    """Every layer in `targets` must also match `section`'s target_modules."""
    missing = [f for f in targets if not matches(f, suffixes)]
    if missing:
        raise ConfigError(f"{who} {missing[:2]}, which {why}; add their suffixes to "
                          f"`{section}.target_modules`.")


# ---------------------------------------------------------------- stage bookkeeping
def fingerprint(recipe: Recipe, stage: str, out: Path) -> str:
    """Hash of the recipe sections a stage depends on and its parent's fingerprint."""
    parts = {s: recipe.raw[s] for s in _SECTIONS[stage]}
    parent = parent_of(recipe, stage)
    if parent:
        # only the recorded fingerprint is read: the parent's files are verified when loaded
        parts["parent"] = load_stage(stage_dir(out, parent), expect=parent,
                                     verify=False).raw.get("fingerprint")
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def up_to_date(out: Path, stage: str, fp: str) -> bool:
    try:
        return load_stage(stage_dir(out, stage), expect=stage).raw.get("fingerprint") == fp
    except Exception:  # absent, incomplete or foreign: recompute
        return False


def _current(recipe: Recipe, out: Path, stage: str) -> tuple[str, bool]:
    """(fingerprint, whether OUT/stage already holds exactly these inputs)."""
    fp = fingerprint(recipe, stage, out)
    fresh = up_to_date(out, stage, fp)
    if fresh:
        log(f"{stage}: up to date in {stage_dir(out, stage)}")
    return fp, fresh


def calibration_ids(recipe: Recipe, tokenizer, cfg=None) -> torch.Tensor:
    """(calib_samples, calib_seq_len) ids: the task's train text, concatenated and cut in pieces.

    `cfg` holds calib_samples/calib_seq_len/seed: the sparsify config unless given.
    """
    cfg = cfg or recipe.sparsify
    texts = data_mod.calibration_texts(train_items(recipe))
    random.Random(cfg.seed).shuffle(texts)
    need = cfg.calib_samples * cfg.calib_seq_len
    ids: list[int] = []
    for t in texts:
        ids += tokenizer(t, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        if len(ids) >= need:
            break
    if len(ids) < need:
        raise ConfigError(
            f"the training text has {len(ids)} tokens, calibration needs calib_samples*"
            f"calib_seq_len={need}; lower `calib_samples` or `calib_seq_len`."
        )
    return torch.tensor(ids[:need]).reshape(cfg.calib_samples, cfg.calib_seq_len)


# ---------------------------------------------------------------- the stages
def run_sparsify(recipe: Recipe, out: Path, *, progress: bool = True) -> None:
    fp, fresh = _current(recipe, out, "sparsify")
    if fresh:
        return
    model, tok = load_model(recipe.model.name_or_path,
                            trust_remote_code=recipe.model.trust_remote_code)
    calib = calibration_ids(recipe, tok)
    if recipe.adapters.quantized_base and recipe.quantize.method == "gptq":
        calibration_ids(recipe, tok, recipe.quantize)  # enough text for GPTQ too, before any work
    t0 = time.perf_counter()
    res = sparsify_(model, recipe.sparsify, calib=calib, progress=progress)
    seconds = time.perf_counter() - t0
    with atomic_dir(out / "sparsify") as tmp:
        res.save(tmp, model, tok, extra_metrics={"seconds": seconds}, fingerprint=fp,
                 source_model=recipe.model.name_or_path)
    log(f"sparsify: {len(res.masks)} layers at {recipe.sparsify.target_sparsity:.0%} "
        f"in {seconds:.1f}s -> {out / 'sparsify'}")


def _stage_model(out: Path, stage: str, extra: tuple[str, ...] = ()):
    """(model, tokenizer, masks) of a model-holding stage directory, checked against each other."""
    src = out / stage
    load_stage(src, expect=stage, require=(MASKS_FILE, "config.json", *extra))
    model, tok = load_model(str(src))
    masks = load_masks(src)
    check_masks_match(model, masks)
    return model, tok, masks


def run_quantize(recipe: Recipe, out: Path, *, progress: bool = True) -> None:
    """INT4 (rtn or mask-aware gptq) of OUT/sparsify into OUT/quantize; every zero kept."""
    from .quantization.api import quantize_

    fp, fresh = _current(recipe, out, "quantize")
    if fresh:
        return
    model, tok, masks = _stage_model(out, "sparsify")
    calib = calibration_ids(recipe, tok, recipe.quantize) if recipe.quantize.method == "gptq" else None
    t0 = time.perf_counter()
    res = quantize_(model, recipe.quantize, masks=masks, calib=calib, progress=progress)
    seconds = time.perf_counter() - t0
    with atomic_dir(out / "quantize") as tmp:
        save_masks(masks, tmp)  # before stage.json, which records its sha256
        res.save(tmp, model, tok, parent="sparsify", fingerprint=fp)
    m = res.metrics()
    log(f"quantize: {recipe.quantize.method} INT4 g{recipe.quantize.group_size} on "
        f"{len(res.targeted_modules)} layers in {seconds:.1f}s, mean sparsity "
        f"{m['mean_sparsity']:.2%}, new nonzeros {m['total_new_nonzeros']}, mean relative weight "
        f"error {m['mean_rel_error']:.4f} -> {out / 'quantize'}")


def _base_with_adapters(recipe: Recipe, out: Path):
    """The base the adapters train on, with fresh NLS adapters; returns (model, tok, masks).

    FP modes: the sparse model of OUT/sparsify. INT4 modes: the INT4 model of OUT/quantize (its
    `Int4Linear` layers rebuilt from int4.safetensors), with the FP sparse weights at hand for
    `qa_base: fp`.
    """
    from .quantization.api import INT4_FILE, load_int4_

    stage = parent_of(recipe, "finetune")
    model, tok, masks = _stage_model(out, stage, extra=(INT4_FILE,) if stage == "quantize" else ())
    fp_weights = None
    if stage == "quantize":
        if recipe.adapters.qa_base == "fp":
            from safetensors.torch import load_file

            fp_all = load_file(out / "sparsify" / "model.safetensors")
            fp_weights = {n: fp_all[n] for n in masks}
        load_int4_(model, out / stage)
    torch.manual_seed(recipe.train.seed)  # adapter init
    add_adapters_(model, recipe.adapters, masks=masks, fp_weights=fp_weights)
    return model, tok, masks


def run_finetune(recipe: Recipe, out: Path, *, progress: bool = True) -> None:
    fp, fresh = _current(recipe, out, "finetune")
    if fresh:
        return
    from .finetune import distributed

    model, tok, _ = _base_with_adapters(recipe, out)
    work = out / ".finetune-work"
    res = finetune_(model, tok, train_items(recipe), recipe.train,
                    checkpoint_dir=work / "checkpoints", fingerprint=fp,
                    progress=progress and distributed.is_main())
    if not distributed.is_main():  # rank 0 writes the stage; the others wait for it
        distributed.barrier()
        return
    with atomic_dir(out / "finetune") as tmp:
        save_adapters(model, tmp)
        (tmp / "adapter_config.json").write_text(json.dumps(
            {"format": "sqft-nls", **asdict(recipe.adapters)}, indent=2) + "\n")
        with open(tmp / "train_log.jsonl", "w") as f:
            for row in res.log:
                f.write(json.dumps(row) + "\n")
        if (work / "checkpoints").exists():
            shutil.move(str(work / "checkpoints"), tmp / "checkpoints")
        write_stage_json(
            tmp, stage="finetune", parent=parent_of(recipe, "finetune"),
            config={"adapters": asdict(recipe.adapters), "train": asdict(recipe.train)},
            metrics={"final_loss": res.log[-1]["loss"] if res.log else None,
                     "seconds": res.seconds,
                     "seconds_per_step": res.seconds / max(1, res.steps - res.resumed_from),
                     "precision": res.precision, "resumed_from": res.resumed_from,
                     "world_size": distributed.world()[1],
                     "adapter_params_max": count_adapter_params(model),
                     "rank_counts": res.rank_counts},
            fingerprint=fp, base_masks_sha256=_masks_sha(out, recipe))
    shutil.rmtree(work, ignore_errors=True)
    distributed.barrier()
    log(f"finetune: {res.steps} steps ({res.precision}) in {res.seconds:.0f}s -> {out / 'finetune'}")


def _masks_sha(out: Path, recipe: Recipe) -> str:
    from .artifacts import sha256_file

    return sha256_file(stage_dir(out, parent_of(recipe, "finetune")) / MASKS_FILE)


def _trained_model(recipe: Recipe, out: Path):
    """The base with the trained adapters of OUT/finetune, which must have been trained on it."""
    rec = load_stage(out / "finetune", expect="finetune")
    trained_on = rec.raw.get("base_masks_sha256")
    if trained_on is not None and trained_on != _masks_sha(out, recipe):
        raise ArtifactError(
            f"the adapters in {out / 'finetune'} were trained on another sparse base than the one "
            f"now in {stage_dir(out, parent_of(recipe, 'finetune'))} (masks differ); rerun finetune.")
    model, tok, masks = _base_with_adapters(recipe, out)
    load_adapters_(model, out / "finetune")
    return model, tok, masks


def run_select(recipe: Recipe, out: Path, *, progress: bool = True) -> None:
    fp, fresh = _current(recipe, out, "select")
    if fresh:
        return
    model, tok, _ = _trained_model(recipe, out)
    search = _search(recipe, model, tok, progress=progress) if recipe.select.is_search else None
    ranks = set_active_ranks_(model, search.best.ranks if search else recipe.select.choice)
    metrics = {"ranks": ranks, "adapter_params": count_adapter_params(model, active=True)}
    with atomic_dir(out / "select") as tmp:
        save_peft_adapter(model, tmp, base_model=str((out / "sparsify").resolve()),
                          alpha=recipe.adapters.alpha)
        if search:
            metrics["search"] = _write_search(tmp, recipe, search)
        write_stage_json(tmp, stage="select", parent="finetune", config=asdict(recipe.select),
                         metrics=metrics, fingerprint=fp)
    elastic = sorted({r for g, r in ranks.items() if g.endswith(".elastic")})
    found = ""
    if search:
        m = recipe.select.metric
        found = (f" (held-out {m} {search.best.score:.1%} vs heuristic {search.start.score:.1%}, "
                 f"{len(search.trials)} configurations)")
    log(f"select: {recipe.select.strategy} -> elastic ranks {elastic}{found} -> {out / 'select'}")


def _search(recipe: Recipe, model, tok, *, progress: bool):
    """Search per-group ranks from the heuristic configuration, scored on the held-out items."""
    from tqdm.auto import tqdm

    from .adapters.api import rank_groups
    from .search import STRATEGIES

    cfg = recipe.select
    items = holdout_items(recipe)
    device = resolve_device(recipe.train.device)
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

    log(f"select: {cfg.strategy} search, {cfg.budget} configurations scored on {len(items)} "
        "held-out train items")
    bar = tqdm(total=cfg.budget, desc=f"select ({cfg.strategy})", unit="config", disable=not progress)
    best = [float("-inf")]

    def on_trial(t):
        best[0] = max(best[0], t.score)
        bar.set_postfix({cfg.metric: f"{best[0]:.3f}"}, refresh=False)
        bar.update(1)

    kwargs = {"population": cfg.population} if cfg.strategy == "evolution" else {}
    start = set_active_ranks_(model, "heuristic")
    res = STRATEGIES[cfg.strategy](rank_groups(model), start, evaluate, params, budget=cfg.budget,
                                   seed=cfg.seed, on_trial=on_trial, **kwargs)
    bar.close()
    return res


def _write_search(stage: Path, recipe: Recipe, res) -> dict:
    """search_log.jsonl (every configuration tried) and pareto.json; returns the summary."""
    with open(stage / "search_log.jsonl", "w") as f:
        for t in res.trials:
            f.write(json.dumps(t.as_dict()) + "\n")
    front = [t.as_dict() for t in res.pareto()]
    (stage / "pareto.json").write_text(json.dumps(front, indent=2) + "\n")
    return {"strategy": recipe.select.strategy, "metric": recipe.select.metric,
            "holdout_items": recipe.data.holdout_items, "evaluations": len(res.trials),
            "heuristic_score": res.start.score, "best_score": res.best.score,
            "best_index": res.best.index, "pareto_size": len(front)}


def run_merge(recipe: Recipe, out: Path, *, progress: bool = True) -> None:
    fp, fresh = _current(recipe, out, "merge")
    if fresh:
        return
    model, tok, masks = _trained_model(recipe, out)
    ranks = load_stage(out / "select", expect="select").metrics["ranks"]
    set_active_ranks_(model, ranks)
    res = merge_(model, masks=masks, method=recipe.merge.method)
    with atomic_dir(out / "merge") as tmp:
        from .quantization.api import save_model_dir

        save_model_dir(model, tok, tmp)
        save_masks(masks, tmp)
        write_stage_json(tmp, stage="merge", parent="select", config=asdict(recipe.merge),
                         metrics=res.metrics(), targeted_modules=res.targeted_modules,
                         fingerprint=fp)
    m = res.metrics()
    kind = "INT4 on the base grid (qa-sparsepeft)" if recipe.adapters.mode == "qa-sparsepeft" \
        else recipe.merge.method
    log(f"merge: {kind}, mean sparsity {m['mean_sparsity']:.2%}, new nonzeros "
        f"{m['total_new_nonzeros']} (an unmasked LoRA merge would be "
        f"{m['mean_unmasked_density']:.2%} dense) -> {out / 'merge'}")


def run_export(recipe: Recipe, out: Path, *, progress: bool = True) -> None:
    """OUT/merge -> OUT/openvino: exact INT4 (or FP16 / sparse INT8) IR, tokenizer IR, masks."""
    from .export.api import export_

    fp, fresh = _current(recipe, out, "export")
    if fresh:
        return
    t0 = time.perf_counter()
    texts = data_mod.calibration_texts(train_items(recipe))[:64] \
        if recipe.export.format == "sparse-int8" else None
    fmt = export_(out / "merge", stage_dir(out, "export"), recipe.export, fingerprint=fp,
                  calib_texts=texts)
    log(f"export: {fmt} OpenVINO IR in {time.perf_counter() - t0:.0f}s -> {stage_dir(out, 'export')}")


def run_verify(recipe: Recipe, out: Path, *, progress: bool = True) -> bool:
    """`sqft verify` on OUT/openvino; writes OUT/openvino/verify.json; True when it passed."""
    from .export.api import verify_export

    export = stage_dir(out, "export")
    report = verify_export(export, out / "merge")
    print(report.table(), flush=True)
    tmp = export / "verify.json.tmp"
    tmp.write_text(json.dumps(report.as_dict(), indent=2) + "\n")
    tmp.replace(export / "verify.json")
    return report.ok


RUNNERS = {"sparsify": run_sparsify, "quantize": run_quantize, "finetune": run_finetune,
           "select": run_select, "merge": run_merge, "export": run_export}


# ---------------------------------------------------------------- evaluation and summary
def evaluate_dir(recipe: Recipe, source: str, items, masks) -> dict:
    model, tok = load_model(source, trust_remote_code=recipe.model.trust_remote_code)
    device = resolve_device(recipe.train.device)
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


def run_eval(recipe: Recipe, out: Path, *, progress: bool = True) -> dict:
    """The accuracy table (built-in scorer, OUT/summary.json), or lm-eval (OUT/lm_eval.json)."""
    if recipe.eval.harness == "lm-eval":
        return run_lm_eval(recipe, out, progress=progress)
    items = eval_items(recipe)
    masks = load_masks(out / "sparsify")
    sparse = f"sparse ({recipe.sparsify.target_sparsity:.0%} wanda)"
    variants = [("dense", recipe.model.name_or_path), (sparse, str(out / "sparsify"))]
    if recipe.adapters.quantized_base:
        q = recipe.quantize
        variants.append((f"{sparse[:-1]}, INT4 {q.method} g{q.group_size})", str(out / "quantize")))
    int4 = " INT4" if recipe.adapters.mode == "qa-sparsepeft" else ""
    variants.append((f"sparse + NLS {recipe.adapters.mode}, merged{int4}", str(out / "merge")))
    rows = []
    for name, source in variants:
        log(f"eval: {name} on {len(items)} {recipe.data.task} validation items")
        rows.append({"variant": name, "source": source, **evaluate_dir(recipe, source, items, masks)})
    merge = load_stage(out / "merge", expect="merge").metrics
    finetune = load_stage(out / "finetune", expect="finetune").metrics
    summary = {
        "task": recipe.data.task,
        "eval_items": len(items),
        "rows": rows,
        "merge": {k: merge[k] for k in ("method", "mean_sparsity", "total_new_nonzeros",
                                         "mean_unmasked_density")},
        "finetune": {k: finetune.get(k) for k in ("final_loss", "seconds", "seconds_per_step",
                                                  "precision")},
        "recipe": recipe.raw,
    }
    tmp = out / "summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2) + "\n")
    tmp.replace(out / "summary.json")
    print(format_table(summary), flush=True)
    return summary


def run_lm_eval(recipe: Recipe, out: Path, *, progress: bool = True) -> dict:
    """lm-evaluation-harness on the run's merged model, its base + unmerged adapters (at the
    selected ranks) and its OpenVINO export, over the same items for each."""
    from .evaluation import harness

    tasks = list(recipe.eval.tasks) or [recipe.data.task]
    items = {t: eval_items(recipe) if t == recipe.data.task else
             data_mod.subsample(data_mod.load_val_items(t), recipe.eval.items, recipe.eval.seed)
             for t in tasks if t in data_mod.TASKS or t == recipe.data.task}
    work = out / ".lm-eval-work"
    bs = recipe.eval.batch_size
    variants = {}

    def evaluate(name, lm):
        log(f"eval (lm-eval): {name} on {tasks}")
        variants[name] = harness.scores(harness.run_harness(lm, tasks, items, work / "tasks",
                                                            limit=recipe.eval.items))

    merged, tok = load_model(str(out / "merge"), trust_remote_code=recipe.model.trust_remote_code)
    evaluate("merged", harness.harness_lm(merged.eval(), tok, batch_size=bs))
    del merged
    unmerged, tok, _ = _trained_model(recipe, out)
    set_active_ranks_(unmerged, load_stage(out / "select", expect="select").metrics["ranks"])
    evaluate("base + adapters (unmerged)", harness.harness_lm(unmerged.eval(), tok, batch_size=bs))
    del unmerged
    export = stage_dir(out, "export")
    if (export / "openvino_model.xml").is_file():
        load_stage(export, expect="export")
        evaluate("openvino", harness.harness_lm(openvino_dir=export, work=work, batch_size=bs))
    shutil.rmtree(work, ignore_errors=True)
    result = {"harness": "lm-eval", "tasks": tasks, "items": recipe.eval.items, "variants": variants}
    tmp = out / "lm_eval.json.tmp"
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(out / "lm_eval.json")
    lines = [f"\nlm-eval (zero-shot; {recipe.eval.items or 'all'} items per task)",
             f"{'variant':<30} {'task':<16} {'acc':>7} {'acc_norm':>9} {'n':>6}"]
    for name, per_task in variants.items():
        for t, r in per_task.items():
            lines.append(f"{name:<30} {t:<16} {r['acc']:>7.1%} {r['acc_norm']:>9.1%} {r['n'] or '':>6}")
    print("\n".join(lines), flush=True)
    return result


def format_table(summary: dict) -> str:
    lines = [f"\n{summary['task']} validation accuracy ({summary['eval_items']} items, "
             "log-likelihood of each choice)",
             f"{'variant':<40} {'sparsity':>9} {'acc':>7} {'acc_norm':>9}"]
    for r in summary["rows"]:
        lines.append(f"{r['variant']:<40} {r['sparsity']:>9.1%} {r['acc']:>7.1%} "
                     f"{r['acc_norm']:>9.1%}")
    m = summary["merge"]
    qa = summary.get("recipe", {}).get("finetune", {}).get("mode") == "qa-sparsepeft"
    kind = "INT4 on the base grid, masked" if qa else m["method"]
    lines.append(f"merge ({kind}): {m['total_new_nonzeros']} new nonzeros; a plain LoRA "
                 f"merge of the same adapters would leave the layers {m['mean_unmasked_density']:.1%}"
                 " dense")
    return "\n".join(lines)


def run_pipeline(recipe: Recipe, out: Path, *, progress: bool = True) -> dict:
    """Validate, then sparsify -> finetune -> select -> merge -> evaluate; returns the summary."""
    from .finetune.distributed import launched

    if launched():
        raise ConfigError("`sqft run` under torchrun/accelerate would run every stage on every "
                          "rank; run the other stages in one process and launch only "
                          "`sqft finetune` on several ranks.")
    validate(recipe, out=out)
    t0 = time.perf_counter()
    for stage in stages_for(recipe):
        RUNNERS[stage](recipe, out, progress=progress)
    summary = run_eval(recipe, out, progress=progress)
    if "export" in stages_for(recipe):
        if not run_verify(recipe, out):
            raise ArtifactError(f"the export in {stage_dir(out, 'export')} failed verification "
                                "(table above).")
        from .export.api import generate

        prompt = recipe.export.verify_prompts[0]
        log(f"generate (OpenVINO GenAI, {stage_dir(out, 'export')}): {prompt!r}")
        print(prompt, end="", flush=True)
        generate(stage_dir(out, "export"), prompt, max_new_tokens=recipe.export.max_new_tokens,
                 stream=lambda piece: print(piece, end="", flush=True))
        print(flush=True)
    from .report import write_report

    log(f"done in {time.perf_counter() - t0:.0f}s; summary in {out / 'summary.json'}, report in "
        f"{write_report(out)}")
    return summary
