"""lm-evaluation-harness on our models: the local task definitions give lm-eval exactly the
requests our built-in scorer makes, and `sqft eval --harness lm-eval` covers merged, unmerged and
OpenVINO variants of a run."""

import json

import pytest
import torch

import sqft_intel as sq
from sqft_intel.evaluation import harness
from sqft_intel.evaluation.scoring import choice_logprobs
from tests.conftest import run_cli


def test_builtin_scorer_agrees_with_lm_eval_item_by_item(tmp_path, tiny_model_dir, tiny_task):
    model, tok = sq.load_model(str(tiny_model_dir))
    items = sq.load_jsonl(tiny_task[1])
    ours = choice_logprobs(model.eval(), tok, items, progress=False)
    res = harness.run_harness(harness.harness_lm(model, tok, batch_size=4), ["tiny"], {"tiny": items},
                              tmp_path, log_samples=True)
    theirs = harness.sample_logprobs(res, "tiny")
    assert sorted(theirs) == list(range(len(items)))
    for i, lps in enumerate(ours):
        torch.testing.assert_close(torch.tensor(theirs[i]), torch.tensor(lps), atol=1e-4, rtol=1e-5)
    score = sq.score_mc(model, tok, items, progress=False)
    got = harness.scores(res)["tiny"]
    assert got["acc"] == pytest.approx(score.acc) and got["acc_norm"] == pytest.approx(score.acc_norm)
    assert got["n"] == len(items)


def test_sqft_eval_with_lm_eval_on_merged_unmerged_and_openvino(tiny_int4_run):
    out, _ = tiny_int4_run
    proc = run_cli("eval", "--recipe", str(out.parent / "recipe.yaml"), "--out", str(out),
                   "--no-progress", "--harness", "lm-eval", "--set", "eval.items=12",
                   "--set", "finetune.mode=qa-sparsepeft", "--set", "quantize.group_size=32",
                   "--set", "finetune.lr=0.02", "--set", "export.enabled=true")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    res = json.loads((out / "lm_eval.json").read_text())
    v = res["variants"]
    assert sorted(v) == ["base + adapters (unmerged)", "merged", "openvino"]
    task = res["tasks"][0]
    for name in v:
        assert v[name][task]["n"] == 12 and 0 <= v[name][task]["acc"] <= 1
    # the INT4 merge equals the trained model, and the exact INT4 IR equals the merge
    assert v["merged"][task] == v["base + adapters (unmerged)"][task]
    assert abs(v["openvino"][task]["acc"] - v["merged"][task]["acc"]) <= 1 / 12 + 1e-9
    assert "lm-eval" in proc.stdout and not (out / ".lm-eval-work").exists()


def test_unknown_lm_eval_task_is_refused_before_work(tmp_path, tiny_recipe):
    proc = run_cli("eval", "--recipe", str(tiny_recipe), "--out", str(tmp_path / "r"),
                   "--harness", "lm-eval", "--tasks", "arc_easyy_typo")
    assert proc.returncode == 2 and "arc_easyy_typo" in proc.stderr
    assert "did you mean 'arc_easy'" in proc.stderr
