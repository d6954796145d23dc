"""Stage `finetune`: NLS adapters trained on the sparse (FP) or INT4 base; resumable, DDP-aware."""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import asdict
from pathlib import Path

import torch

from ..adapters.api import add_adapters_, count_adapter_params, load_adapters_, save_adapters
from ..artifacts import load_model_stage, load_stage, save_stage, sha256_file
from ..errors import ArtifactError, ConfigError
from ..finetune import distributed
from ..finetune.loop import encode_item, end_token_id, finetune_, fit_examples
from ..quantization.storage import INT4_FILE, load_int4_
from ..recipe import Recipe
from ..run_dir import TRAIN_LOG, RunDir
from ..sparsity.masks import MASKS_FILE
from ..targets import find_targets
from .check import CheckContext, require_covered, require_train_items

log = logging.getLogger(__name__)


def check(recipe: Recipe, ctx: CheckContext) -> None:
    """Targets exist; a masked mode adapts only pruned layers, an INT4 mode only quantized ones."""
    adapters = recipe.finetune.adapters
    targets = find_targets(ctx.skeleton, adapters.target_modules, what="finetune.target_modules")
    who = f"`finetune.mode`={adapters.mode!r} adapts"
    if adapters.masked:
        require_covered(targets, recipe.sparsify.target_modules, who,
                        "sparsify does not prune (no mask)", "sparsify")
    if adapters.quantized_base:
        require_covered(targets, recipe.quantize.target_modules, who, "quantize leaves in FP",
                        "quantize")
    if "finetune" in ctx.running:
        require_train_items(recipe)
        _check_overlong(recipe, ctx)


def _check_overlong(recipe: Recipe, ctx: CheckContext) -> None:
    """With `finetune.overlong: refuse`, SFT rows longer than `max_length` stop the run here,
    before any weight loads (`finetune_` checks again with the loaded model's end token)."""
    train, splits = recipe.finetune.train, recipe.splits
    if splits.train_format == "mc" or train.overlong != "refuse":
        return  # MC rows are cut from the left, as they always were
    from types import SimpleNamespace

    from transformers import GenerationConfig

    from ..models import resolve_model

    try:  # the generation config the stage will load: where generation stops
        source = SimpleNamespace(generation_config=GenerationConfig.from_pretrained(
            resolve_model(recipe.model.name_or_path)))
    except OSError:  # no generation_config.json: transformers derives it from the config
        source = ctx.skeleton
    end_id = end_token_id(source, splits.tokenizer)
    examples = [encode_item(splits.tokenizer, it, end_id, train_on_prompt=train.train_on_prompt)
                for it in splits.train]
    fit_examples(examples, splits.train, train.max_length, train.overlong)


def _base_with_adapters(recipe: Recipe, run_dir: RunDir, base: str):
    """The base the adapters train on, with fresh NLS adapters; returns (model, tok, masks).

    FP modes: the sparse model of the sparsify stage. INT4 modes: the INT4 model of the quantize
    stage (its `Int4Linear` layers rebuilt from int4.safetensors), with the FP sparse weights at
    hand for `qa_base: fp`.
    """
    adapters = recipe.finetune.adapters
    quantized = base == "quantize"
    model, tok, masks = load_model_stage(run_dir.stage(base), base,
                                         require=(INT4_FILE,) if quantized else ())
    fp_weights = None
    if quantized:
        if adapters.qa_base == "fp":
            from safetensors.torch import load_file

            fp_all = load_file(run_dir.sparsify / "model.safetensors")
            fp_weights = {n: fp_all[n] for n in masks}
        load_int4_(model, run_dir.stage(base))
    torch.manual_seed(recipe.finetune.train.seed)  # adapter init
    add_adapters_(model, adapters, masks=masks, fp_weights=fp_weights)
    return model, tok, masks


def _masks_sha(run_dir: RunDir, base: str) -> str:
    return sha256_file(run_dir.stage(base) / MASKS_FILE)


def run(recipe: Recipe, run_dir: RunDir, *, parent: str | None, fingerprint: str,
        progress: bool = True) -> None:
    adapters, train = recipe.finetune.adapters, recipe.finetune.train
    if train.lr is None:
        raise ConfigError("`finetune.lr` is unresolved; build the recipe with `build_recipe`.")
    model, tok, _ = _base_with_adapters(recipe, run_dir, parent)
    work = run_dir.finetune_work
    res = finetune_(model, tok, recipe.splits.train, train, checkpoint_dir=work / "checkpoints",
                    fingerprint=fingerprint, progress=progress and distributed.is_main())
    if not distributed.is_main():  # rank 0 writes the stage; the others wait for it
        distributed.barrier()
        return

    def write(tmp: Path) -> None:
        save_adapters(model, tmp)
        (tmp / "adapter_config.json").write_text(json.dumps(
            {"format": "sqft-nls", **asdict(adapters)}, indent=2) + "\n")
        with open(tmp / TRAIN_LOG, "w") as f:
            for row in res.log:
                f.write(json.dumps(row) + "\n")
        if (work / "checkpoints").exists():
            shutil.move(str(work / "checkpoints"), tmp / "checkpoints")

    save_stage(run_dir.finetune, write, stage="finetune", parent=parent,
               config={"adapters": asdict(adapters), "train": asdict(train)},
               metrics={"final_loss": res.log[-1]["loss"] if res.log else None,
                        "seconds": res.seconds,
                        "seconds_per_step": res.seconds / max(1, res.steps - res.resumed_from),
                        "precision": res.precision, "resumed_from": res.resumed_from,
                        "world_size": distributed.world()[1],
                        "adapter_params_max": count_adapter_params(model),
                        "rank_counts": res.rank_counts,
                        "prompt_format": recipe.splits.prompt_format,
                        "train_format": recipe.splits.train_format,
                        "truncated_rows": res.truncated},
               fingerprint=fingerprint, base_masks_sha256=_masks_sha(run_dir, parent))
    shutil.rmtree(work, ignore_errors=True)
    distributed.barrier()
    log.info("finetune: %d steps (%s, %s prompts) in %.0fs -> %s", res.steps, res.precision,
             recipe.splits.prompt_format, res.seconds, run_dir.finetune)


def load_trained(recipe: Recipe, run_dir: RunDir):
    """(model, tokenizer, masks): the base the finetune stage trained on, with its adapters.

    Raises:
        ArtifactError: the base stage changed since (its masks differ from those trained on).
    """
    rec = load_stage(run_dir.finetune, expect="finetune")
    base = rec.parent
    trained_on = rec.raw.get("base_masks_sha256")
    if trained_on is not None and trained_on != _masks_sha(run_dir, base):
        raise ArtifactError(
            f"the adapters in {run_dir.finetune} were trained on another sparse base than the one "
            f"now in {run_dir.stage(base)} (masks differ); rerun finetune.")
    model, tok, masks = _base_with_adapters(recipe, run_dir, base)
    load_adapters_(model, run_dir.finetune)
    return model, tok, masks
