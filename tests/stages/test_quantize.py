"""Stage `quantize`: INT4 of the sparse model in which every pruned weight stays exactly zero
(q == z), recording its parent `sparsify`; reused until its sections change."""

import torch
from safetensors.torch import load_file

import sqft_intel as sq
from sqft_intel.quantization.int4 import dequantize, unpack
from sqft_intel.quantization.storage import INT4_FILE
from sqft_intel.run_dir import RunDir
from tests.conftest import copy_run
from tests.stages.conftest import QA, recipe_of, run_stages, snapshot

GROUP = QA["quantize"]["group_size"]


def test_pruned_weights_stay_at_the_zero_point(int4_run):
    run = RunDir(int4_run)
    rec = sq.load_stage(run.quantize, expect="quantize", require=(INT4_FILE,))
    assert rec.parent == "sparsify" and rec.raw["fingerprint"]
    assert rec.config["method"] == "gptq" and rec.config["group_size"] == GROUP
    assert rec.metrics["total_new_nonzeros"] == 0
    masks = sq.load_masks(run.sparsify)
    assert sq.load_masks(run.quantize).keys() == masks.keys()
    assert all(torch.equal(sq.load_masks(run.quantize)[n], k) for n, k in masks.items())
    int4 = load_file(run.quantize / INT4_FILE)
    hf = load_file(run.quantize / "model.safetensors")  # the HF weights hold Q(W)
    for name, keep in masks.items():
        q = unpack(int4[f"{name}.qweight"])
        z = int4[f"{name}.zeros"].repeat_interleave(GROUP, dim=1)
        assert q.shape == keep.shape and int4[f"{name}.scales"].dtype == torch.float16
        assert (q[~keep] == z[~keep]).all(), name
        assert (hf[name][~keep] == 0).all(), name
        assert torch.equal(hf[name], dequantize(q, int4[f"{name}.scales"], int4[f"{name}.zeros"]))
        assert rec.metrics["group_sizes"][name] == GROUP
        assert rec.metrics["sparsity"][name] >= float((~keep).sum()) / keep.numel()


def test_unchanged_sections_reuse_the_stage_and_a_changed_one_recomputes_it(tmp_path, int4_run,
                                                                             stage_recipe):
    out = copy_run(int4_run, tmp_path / "run", stages=("sparsify", "quantize"))
    folder = RunDir(out).quantize
    before = snapshot(folder)
    for other in ({}, {"finetune": {"lr": 0.05}, "merge": {"method": "lora"}}):
        run_stages(recipe_of(stage_recipe, {**QA, **other}), out, "quantize")
        assert snapshot(folder) == before, other
    run_stages(recipe_of(stage_recipe, {**QA, "quantize": {"group_size": 64}}), out, "quantize")
    assert snapshot(folder) != before
    rec = sq.load_stage(folder, expect="quantize")
    assert set(rec.metrics["group_sizes"].values()) == {64} and rec.metrics["total_new_nonzeros"] == 0
