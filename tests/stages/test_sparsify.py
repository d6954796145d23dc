"""Stage `sparsify`: the sparse model, its masks and a stage.json with per-layer sparsity;
reused while its sections (model, data, sparsify) are unchanged."""

import torch
from safetensors.torch import load_file

import sqft_intel as sq
from sqft_intel.run_dir import RunDir
from tests.conftest import copy_run
from tests.stages.conftest import recipe_of, run_stages, snapshot

SPARSITY_TOL = 0.01  # per-row pruning of 64/128-wide rows: the measured fraction is the target


def test_masks_are_the_zeros_of_the_saved_weights(sparse_run):
    folder = RunDir(sparse_run).sparsify
    masks = sq.load_masks(folder)
    weights = load_file(folder / "model.safetensors")
    assert {"model.layers.0.self_attn.q_proj.weight", "model.layers.1.mlp.down_proj.weight"} <= set(masks)
    for name, keep in masks.items():
        assert keep.dtype == torch.bool and keep.shape == weights[name].shape, name
        assert torch.equal(weights[name] != 0, keep), name  # pruned exactly where the mask says
    assert not any("embed" in n or "lm_head" in n or "norm" in n for n in masks)


def test_stage_json_records_per_layer_sparsity(sparse_run, stage_recipe, tiny_model_dir):
    folder = RunDir(sparse_run).sparsify
    rec = sq.load_stage(folder, expect="sparsify", require=("masks.safetensors", "config.json"))
    masks = sq.load_masks(folder)
    assert rec.parent is None and rec.raw["fingerprint"]
    assert rec.raw["source_model"] == str(tiny_model_dir)
    assert rec.config["sparsity"] == recipe_of(stage_recipe).sparsify.sparsity == 0.5
    per_layer = rec.metrics["sparsity"]
    assert set(per_layer) == set(masks)
    assert sorted(rec.raw["targeted_modules"]) == sorted(n.removesuffix(".weight") for n in masks)
    for name, keep in masks.items():
        assert per_layer[name] == float((~keep).sum()) / keep.numel(), name  # measured, not asked
        assert abs(per_layer[name] - 0.5) < SPARSITY_TOL, name
    assert rec.metrics["mean_sparsity"] == sum(per_layer.values()) / len(per_layer)


def test_unchanged_sections_reuse_the_stage_and_a_changed_one_recomputes_it(tmp_path, sparse_run,
                                                                             stage_recipe):
    out = copy_run(sparse_run, tmp_path / "run")
    folder = RunDir(out).sparsify
    before = snapshot(folder)
    fingerprint = sq.load_stage(folder).raw["fingerprint"]
    # the same recipe, then sections sparsify does not read: nothing rewritten
    for other in ({}, {"finetune": {"steps": 9, "mode": "qa-sparsepeft"}, "quantize": {"group_size": 32},
                       "select": {"strategy": "maximal"}, "merge": {"method": "lora"},
                       "eval": {"items": 3}, "export": {"enabled": True}}):
        run_stages(recipe_of(stage_recipe, other), out, "sparsify")
        assert snapshot(folder) == before, other

    run_stages(recipe_of(stage_recipe, {"sparsify": {"sparsity": 0.6}}), out, "sparsify")
    assert snapshot(folder) != before
    rec = sq.load_stage(folder, expect="sparsify")
    assert rec.raw["fingerprint"] != fingerprint and rec.config["sparsity"] == 0.6
    assert abs(rec.metrics["mean_sparsity"] - 0.6) < SPARSITY_TOL
    assert not list(out.glob(".*"))  # the old folder and the temporary one are gone

    recomputed = snapshot(folder)  # data is one of its sections too
    run_stages(recipe_of(stage_recipe, {"sparsify": {"sparsity": 0.6}, "data": {"holdout_items": 5}}),
               out, "sparsify")
    assert snapshot(folder) != recomputed
