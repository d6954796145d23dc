"""Stage `finetune`: NLS adapters on the sparse (FP) or INT4 base, recording which base (its
parent and the sha256 of its masks); `load_trained` refuses adapters trained on another base."""

import json

import pytest
import torch
from safetensors.torch import load_file

import sqft_intel as sq
from sqft_intel.artifacts import sha256_file
from sqft_intel.pipeline import fingerprint
from sqft_intel.run_dir import TRAIN_LOG, RunDir
from sqft_intel.sparsity.masks import MASKS_FILE
from sqft_intel.stages.finetune import load_trained
from tests.conftest import copy_run
from tests.stages.conftest import QA, recipe_of, run_stages, snapshot


def test_fp_adapters_record_their_sparse_base(fp_run, stage_recipe):
    run, recipe = RunDir(fp_run), recipe_of(stage_recipe)
    rec = sq.load_stage(run.finetune, expect="finetune",
                        require=("adapters.safetensors", "adapter_config.json", TRAIN_LOG))
    assert rec.parent == "sparsify" and rec.raw["fingerprint"]
    assert rec.raw["base_masks_sha256"] == sha256_file(run.sparsify / MASKS_FILE)
    config = json.loads((run.finetune / "adapter_config.json").read_text())
    assert config["format"] == "sqft-nls" and config["mode"] == "sparsepeft"
    assert config["rank_space"] == [8, 6, 4]
    log = [json.loads(line) for line in (run.finetune / TRAIN_LOG).read_text().splitlines()]
    assert [row["step"] for row in log] == list(range(1, recipe.finetune.train.steps + 1))
    assert rec.metrics["final_loss"] == log[-1]["loss"]
    assert sorted(p.name for p in (run.finetune / "checkpoints").iterdir()) == ["step-000002"]
    assert not run.finetune_work.exists()  # the work folder went into the stage


def test_qa_adapters_record_their_int4_base(int4_run):
    run = RunDir(int4_run)
    rec = sq.load_stage(run.finetune, expect="finetune")
    assert rec.parent == "quantize" and rec.config["adapters"]["mode"] == "qa-sparsepeft"
    assert rec.raw["base_masks_sha256"] == sha256_file(run.quantize / MASKS_FILE)


def test_load_trained_gives_the_trained_adapters_on_their_base(fp_run, stage_recipe):
    run = RunDir(fp_run)
    model, _, masks = load_trained(recipe_of(stage_recipe), run)
    adapters = {f: m for f, m in model.named_modules() if isinstance(m, sq.ElasticLoraLinear)}
    saved = load_file(run.finetune / "adapters.safetensors")
    assert len(adapters) == 10 and masks.keys() == sq.load_masks(run.sparsify).keys()
    assert any(m.lora_B.abs().sum() > 0 for m in adapters.values())  # trained: B moved from 0
    state = model.state_dict()
    for key, value in saved.items():
        assert torch.equal(state[key], value), key


def test_adapters_trained_on_another_base_are_refused(tmp_path, fp_run, stage_recipe):
    out = copy_run(fp_run, tmp_path / "run", stages=("sparsify", "finetune"))
    run = RunDir(out)
    other = recipe_of(stage_recipe, {"sparsify": {"sparsity": 0.6}})
    run_stages(other, out, "sparsify")  # re-sparsified under the trained adapters
    with pytest.raises(sq.ArtifactError, match="trained on another sparse base"):
        load_trained(other, run)
    # the chain sees it too: finetune's fingerprint follows its parent's, so it is retrained
    trained = snapshot(run.finetune)
    assert fingerprint(other, "finetune", run) != sq.load_stage(run.finetune).raw["fingerprint"]
    run_stages(other, out, "finetune")
    assert snapshot(run.finetune) != trained
    rec = sq.load_stage(run.finetune, expect="finetune")
    assert rec.raw["base_masks_sha256"] == sha256_file(run.sparsify / MASKS_FILE)
    load_trained(other, run)


def test_unchanged_sections_reuse_the_stage(tmp_path, fp_run, stage_recipe):
    out = copy_run(fp_run, tmp_path / "run", stages=("sparsify", "finetune"))
    before = snapshot(RunDir(out).finetune)
    run_stages(recipe_of(stage_recipe, {"select": {"strategy": "minimal"}, "eval": {"items": 2}}),
               out, "finetune")
    assert snapshot(RunDir(out).finetune) == before
    run_stages(recipe_of(stage_recipe, {"finetune": {"steps": 2}}), out, "finetune")
    assert snapshot(RunDir(out).finetune) != before
    assert sq.load_stage(RunDir(out).finetune).config["train"]["steps"] == 2


def test_qa_recipe_without_its_quantize_stage_is_refused(tmp_path, sparse_run, stage_recipe):
    out = copy_run(sparse_run, tmp_path / "run")
    with pytest.raises(sq.ArtifactError, match="not a stage directory"):
        run_stages(recipe_of(stage_recipe, QA), out, "finetune")
    assert not RunDir(out).finetune.exists()
