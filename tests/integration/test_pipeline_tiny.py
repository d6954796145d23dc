"""`sqft run` end to end on a tiny Llama: the on-disk layout other tools read, and its invariants."""

import json

import torch
from safetensors.torch import load_file

import sqft_intel as sq
from sqft_intel import load_stage
from tests.conftest import assert_int4_grid, copy_run

LOGIT_TOL = 1e-4  # merged vs unmerged, fp32: the same function, summed in another order


def test_run_writes_the_documented_layout(tmp_path, tiny_recipe, tiny_fp_run, sqft_main):
    out, stdout = tiny_fp_run  # `sqft run` of the tiny recipe
    for f in ("config.json", "model.safetensors", "tokenizer.json", "masks.safetensors",
              "stage.json"):
        assert (out / "sparsify" / f).is_file(), f
    for f in ("adapters.safetensors", "adapter_config.json", "stage.json", "train_log.jsonl"):
        assert (out / "finetune" / f).is_file(), f
    assert sorted(p.name for p in (out / "finetune" / "checkpoints").iterdir()) == ["step-000002"]
    assert (out / "select" / "adapter_model.safetensors").is_file()
    for f in ("config.json", "model.safetensors", "stage.json", "masks.safetensors"):
        assert (out / "merge" / f).is_file(), f
    assert not list(out.glob(".*"))  # no temporary or work directories left behind

    for stage in ("sparsify", "finetune", "select", "merge"):
        rec = load_stage(out / stage, expect=stage)
        assert rec.version == "0.1.0" and "fingerprint" in rec.raw
    masks = load_file(out / "sparsify" / "masks.safetensors")
    assert "model.layers.0.self_attn.q_proj.weight" in masks
    merged = load_file(out / "merge" / "model.safetensors")
    for name, keep in masks.items():
        assert keep.dtype == torch.bool
        assert (merged[name][~keep] == 0).all(), name  # 0 new nonzeros
        assert int((merged[name] != 0).sum()) <= int(keep.sum())

    summary = json.loads((out / "summary.json").read_text())
    assert [r["variant"].split()[0] for r in summary["rows"]] == ["dense", "sparse", "sparse"]
    assert summary["merge"]["total_new_nonzeros"] == 0
    assert summary["merge"]["mean_unmasked_density"] > 0.99  # plain merge would densify
    assert abs(summary["rows"][2]["sparsity"] - 0.5) < 0.01
    assert "variant" in stdout and "new nonzeros" in stdout

    # rerun (on a copy): every stage is up to date, nothing recomputed
    again = copy_run(out, tmp_path / "run")
    code, again_stdout, err = sqft_main("run", "--recipe", tiny_recipe, "--out", again,
                                        "--no-progress")
    assert code == 0, err[-3000:]
    assert again_stdout.count("up to date") == 4


def test_merged_model_equals_unmerged_sparsepeft(tmp_path, tiny_recipe, tiny_fp_run):
    """Logits of OUT/merge vs sparse base + trained adapters at the selected ranks (fp32), and
    the merged model is far from the sparse base: the equality is not that of two near-copies."""
    from sqft_intel.recipe import build_recipe, load_recipe_file
    from sqft_intel.stages.finetune import load_trained

    out = copy_run(tiny_fp_run[0], tmp_path / "run", stages=("sparsify",))
    # the shared recipe's 4 warm-up steps at lr 3e-4 move the logits ~1e-3: train harder here
    recipe = build_recipe(load_recipe_file(tiny_recipe), {"finetune": {"lr": 0.01}})
    for stage in ("finetune", "select", "merge"):
        sq.run_stage(recipe, out, stage, progress=False)
    unmerged, _, _ = load_trained(recipe, sq.RunDir(out))
    sq.set_active_ranks_(unmerged, load_stage(out / "select").metrics["ranks"])
    merged, _ = sq.load_model(str(out / "merge"))
    base, _ = sq.load_model(str(out / "sparsify"))
    ids = torch.randint(300, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = unmerged.eval()(input_ids=ids).logits, merged(input_ids=ids).logits
        sparse = base(input_ids=ids).logits
    torch.testing.assert_close(b, a, atol=LOGIT_TOL, rtol=0)
    assert any(m.lora_B.abs().sum() > 0 for m in unmerged.modules()
               if isinstance(m, sq.ElasticLoraLinear))  # training did move the adapters
    moved = (b - sparse).abs().max().item()
    assert moved >= 100 * LOGIT_TOL, moved  # the adapters' effect dwarfs the merge tolerance


def test_stage_subcommands_chain(tmp_path, tiny_recipe, sqft_main):
    out = tmp_path / "run"
    for stage in ("sparsify", "finetune", "select", "merge", "eval"):
        code, _, err = sqft_main(stage, "--recipe", tiny_recipe, "--out", out, "--no-progress")
        assert code == 0, (stage, err[-2000:])
    assert (out / "summary.json").is_file()


def test_stage_without_its_parent_fails_clearly(tmp_path, tiny_recipe, sqft_main):
    code, _, err = sqft_main("merge", "--recipe", tiny_recipe, "--out", tmp_path / "empty")
    assert code == 2
    assert "not a stage directory" in err and "run the stage" in err


def test_quantize_stage_writes_int4_keeping_zeros(tmp_path, tiny_recipe, tiny_fp_run, sqft_main):
    out = copy_run(tiny_fp_run[0], tmp_path / "run", stages=("sparsify",))
    code, _, err = sqft_main("quantize", "--set", "quantize.group_size=32",
                             "--set", "quantize.calib_samples=4", "--set", "quantize.calib_seq_len=32",
                             "--recipe", tiny_recipe, "--out", out, "--no-progress")
    assert code == 0, err[-2000:]
    rec = load_stage(out / "quantize", expect="quantize")
    assert rec.parent == "sparsify" and rec.config["method"] == "gptq"
    assert rec.metrics["total_new_nonzeros"] == 0
    int4 = load_file(out / "quantize" / "int4.safetensors")
    masks = load_file(out / "sparsify" / "masks.safetensors")
    from sqft_intel.quantization.int4 import unpack

    for name, keep in masks.items():
        q = unpack(int4[f"{name}.qweight"])
        z = int4[f"{name}.zeros"].repeat_interleave(32, dim=1)
        assert int4[f"{name}.scales"].dtype == torch.float16 and q.shape == keep.shape
        assert (q[~keep] == z[~keep]).all(), name
    plain = load_file(out / "quantize" / "model.safetensors")  # HF files hold Q(W): zeros too
    assert all((plain[n][~k] == 0).all() for n, k in masks.items())


def test_quantize_group_size_error_before_work(tmp_path, tiny_recipe, tiny_fp_run, sqft_main):
    out = copy_run(tiny_fp_run[0], tmp_path / "run", stages=("sparsify",))
    code, _, err = sqft_main("quantize", "--recipe", tiny_recipe, "--out", out,
                             "--set", "quantize.group_size=48")
    assert code == 2
    assert "group_size`=48 does not divide in_features=64 of `model.layers.0" in err
    assert not (out / "quantize").exists()


def test_qa_sparsepeft_run_merges_into_exact_int4(tiny_int4_run):
    """sparsify -> quantize -> qa-sparsepeft -> select -> INT4 merge, through the CLI (the
    session's `tiny_int4_run`: g32, lr 0.02, big enough steps to cross a grid step)."""
    from sqft_intel.quantization.int4 import unpack

    out, _ = tiny_int4_run
    assert load_stage(out / "finetune").parent == "quantize"
    base = load_file(out / "quantize" / "int4.safetensors")
    merged = load_file(out / "merge" / "int4.safetensors")
    masks = load_file(out / "sparsify" / "masks.safetensors")
    changed = 0
    for name, keep in masks.items():
        assert_int4_grid(merged, base, out / "finetune", name)  # base's z, trained σ
        q = unpack(merged[f"{name}.qweight"])
        z = merged[f"{name}.zeros"].repeat_interleave(32, dim=1)
        assert (q[~keep] == z[~keep]).all(), name
        changed += int((q != unpack(base[f"{name}.qweight"])).sum())
    assert changed > 0  # the fine-tuned integers differ from the base's
    summary = json.loads((out / "summary.json").read_text())
    assert [r["variant"] for r in summary["rows"]][2:] == [
        "sparse (50% wanda, INT4 gptq g32)", "sparse + NLS qa-sparsepeft, merged INT4"]
    assert summary["merge"]["total_new_nonzeros"] == 0
    # the HF weights of OUT/merge are the exact dequantization of its integers
    hf = load_file(out / "merge" / "model.safetensors")
    from sqft_intel.quantization.int4 import dequantize

    name = next(iter(masks))
    deq = dequantize(unpack(merged[f"{name}.qweight"]), merged[f"{name}.scales"],
                     merged[f"{name}.zeros"])
    assert torch.equal(hf[name], deq)


def test_sqft_mode_cannot_be_merged_by_run(tmp_path, tiny_recipe, sqft_main):
    code, _, err = sqft_main("run", "--recipe", tiny_recipe, "--out", tmp_path / "o",
                             "--set", "finetune.mode=sqft", "--set", "quantize.group_size=32")
    assert code == 2 and "keeps its adapters unmerged" in err
    assert not (tmp_path / "o").exists()
