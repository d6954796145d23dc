"""Stage `merge`: the selected sub-adapter folded into the sparse (FP or INT4) base without a new
nonzero; a plain LoRA merge of QA-SparsePEFT adapters is refused, by the recipe check, the stage
and the verb `sq.merge_`."""

import pytest
import torch
from safetensors.torch import load_file

import sqft_intel as sq
from sqft_intel.quantization.int4 import unpack
from sqft_intel.quantization.storage import INT4_FILE
from sqft_intel.run_dir import RunDir
from sqft_intel.stages.finetune import load_trained
from tests.conftest import assert_int4_grid, copy_run
from tests.stages.conftest import QA, recipe_of, run_stages, snapshot

LOGIT_TOL = 1e-4  # merged vs unmerged, fp32: the same function, summed in another order


def test_merge_keeps_every_zero_and_records_its_parent(fp_run):
    run = RunDir(fp_run)
    rec = sq.load_stage(run.merge, expect="merge", require=("model.safetensors", "masks.safetensors"))
    assert rec.parent == "select" and rec.config["method"] == "sparsepeft"
    assert rec.metrics["ranks"] == sq.load_stage(run.select).metrics["ranks"]
    assert rec.metrics["total_new_nonzeros"] == 0 and rec.metrics["mean_unmasked_density"] > 0.99
    masks = sq.load_masks(run.sparsify)
    merged_masks = sq.load_masks(run.merge)
    assert merged_masks.keys() == masks.keys()
    merged = load_file(run.merge / "model.safetensors")
    for name, keep in masks.items():
        assert torch.equal(merged_masks[name], keep), name
        assert (merged[name][~keep] == 0).all(), name


def test_merged_model_is_the_base_with_the_selected_sub_adapter(fp_run, stage_recipe):
    run = RunDir(fp_run)
    unmerged, _, _ = load_trained(recipe_of(stage_recipe), run)
    sq.set_active_ranks_(unmerged, sq.load_stage(run.select).metrics["ranks"])
    merged, _ = sq.load_model(str(run.merge))
    ids = torch.randint(300, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = unmerged.eval()(input_ids=ids).logits, merged(input_ids=ids).logits
    torch.testing.assert_close(b, a, atol=LOGIT_TOL, rtol=0)


def test_plain_lora_merge_refills_pruned_weights(tmp_path, fp_run, stage_recipe):
    out = copy_run(fp_run, tmp_path / "run", stages=("sparsify", "finetune", "select"))
    run_stages(recipe_of(stage_recipe, {"merge": {"method": "lora"}}), out, "merge")
    rec = sq.load_stage(RunDir(out).merge, expect="merge")
    assert rec.config["method"] == "lora" and rec.metrics["total_new_nonzeros"] > 0
    assert rec.metrics["mean_sparsity"] < 0.5


def test_int4_merge_stays_on_the_base_zero_points(int4_run):
    run = RunDir(int4_run)
    assert sq.load_stage(run.merge, expect="merge", require=(INT4_FILE,)).metrics[
        "total_new_nonzeros"] == 0
    base, merged = load_file(run.quantize / INT4_FILE), load_file(run.merge / INT4_FILE)
    group = QA["quantize"]["group_size"]
    for name, keep in sq.load_masks(run.sparsify).items():
        assert_int4_grid(merged, base, run.finetune, name)  # base's z, trained σ
        q, z = unpack(merged[f"{name}.qweight"]), merged[f"{name}.zeros"].repeat_interleave(group, 1)
        assert (q[~keep] == z[~keep]).all(), name


def test_lora_merge_of_qa_adapters_is_refused(tmp_path, int4_run, stage_recipe):
    qa_lora = recipe_of(stage_recipe, {**QA, "merge": {"method": "lora"}})
    match = "INT4 merge is always masked"
    with pytest.raises(sq.ConfigError, match=match):  # the recipe check, before any weight loads
        sq.validate(qa_lora, running=("merge",))
    out = copy_run(int4_run, tmp_path / "run")
    before = snapshot(RunDir(out).merge)
    with pytest.raises(sq.ConfigError, match=match):  # the stage: the good merge stays
        run_stages(qa_lora, out, "merge")
    assert snapshot(RunDir(out).merge) == before and not list(out.glob(".*"))
    model, _, masks = load_trained(recipe_of(stage_recipe, QA), RunDir(out))
    with pytest.raises(sq.ConfigError, match=match):  # the verb
        sq.merge_(model, masks=masks, method="lora")
    assert sum(isinstance(m, sq.ElasticLoraLinear) for m in model.modules()) == 10  # untouched


def test_learned_scales_through_the_int4_chain_verify_pass(tmp_path, int4_run, stage_recipe):
    """`finetune.learn_scales`: finetune -> select -> INT4 merge -> exact INT4 export on the tiny
    model; the merge holds the trained σ (not the quantize stage's), z unchanged, 0 new nonzeros,
    and `verify_export` passes bit-exact against those learned scales."""
    pytest.importorskip("openvino")
    out = copy_run(int4_run, tmp_path / "run", stages=("sparsify", "quantize"))
    recipe = recipe_of(stage_recipe, {**QA, "finetune": {**QA["finetune"], "learn_scales": True},
                                      "export": {"enabled": True}})
    run_stages(recipe, out, "finetune", "select", "merge", "export")
    run = RunDir(out)
    base, merged = load_file(run.quantize / INT4_FILE), load_file(run.merge / INT4_FILE)
    scale_keys = [k for k in merged if k.endswith(".scales")]
    assert scale_keys and any(not torch.equal(merged[k], base[k]) for k in scale_keys)
    assert all(torch.equal(merged[k], base[k]) for k in merged if k.endswith(".zeros"))
    assert sq.load_stage(run.merge, expect="merge").metrics["total_new_nonzeros"] == 0
    report = sq.verify_export(run.export)
    assert report.ok and not report.int4_mismatch and report.new_nonzeros == 0, report.table()
