"""`eval` (not a chain stage): OUT/summary.json, one row per variant of the run (dense, sparse,
INT4 when trained on it, merged), naming each and the folder it was scored from."""

import json

import sqft_intel as sq
from sqft_intel.pipeline import run_eval
from sqft_intel.run_dir import RunDir
from tests.conftest import copy_run
from tests.stages.conftest import QA, recipe_of, snapshot

ITEMS = 4


def evaluate(recipe, out):
    run = RunDir(out)
    folders = {p.name: snapshot(p) for p in out.iterdir()}
    summary = run_eval(recipe, out)
    assert {p.name: snapshot(p) for p in out.iterdir() if p.is_dir()} == folders  # stages untouched
    assert {p.name for p in out.iterdir()} == set(folders) | {run.summary.name}
    assert json.loads(run.summary.read_text())["rows"] == summary["rows"]
    for row in summary["rows"]:
        assert row["n"] == ITEMS and 0 <= row["acc"] <= 1 and 0 <= row["acc_norm"] <= 1, row
    assert summary["eval_items"] == ITEMS and summary["merge"]["total_new_nonzeros"] == 0
    return summary


def test_summary_rows_name_the_fp_variants(tmp_path, fp_run, stage_recipe, tiny_model_dir):
    out = copy_run(fp_run, tmp_path / "run")
    run = RunDir(out)
    summary = evaluate(recipe_of(stage_recipe, {"eval": {"items": ITEMS}}), out)
    rows = summary["rows"]
    assert [r["variant"] for r in rows] == ["dense", "sparse (50% wanda)",
                                            "sparse + NLS sparsepeft, merged"]
    assert [r["source"] for r in rows] == [str(tiny_model_dir), str(run.sparsify), str(run.merge)]
    assert rows[0]["sparsity"] < 0.01 and all(abs(r["sparsity"] - 0.5) < 0.01 for r in rows[1:])
    assert summary["finetune"]["final_loss"] == sq.load_stage(run.finetune).metrics["final_loss"]


def test_summary_rows_name_the_int4_variants(tmp_path, int4_run, stage_recipe):
    out = copy_run(int4_run, tmp_path / "run")
    run = RunDir(out)
    summary = evaluate(recipe_of(stage_recipe, {**QA, "eval": {"items": ITEMS}}), out)
    assert [(r["variant"], r["source"]) for r in summary["rows"]][1:] == [
        ("sparse (50% wanda)", str(run.sparsify)),
        ("sparse (50% wanda, INT4 gptq g32)", str(run.quantize)),
        ("sparse + NLS qa-sparsepeft, merged INT4", str(run.merge))]
