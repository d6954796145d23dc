"""Stage `select`: one sub-adapter of the trained NLS adapters, written in PEFT's format with the
chosen rank of every module (`rank_pattern`), the ranks recorded in stage.json."""

import json
from pathlib import Path

from safetensors.torch import load_file

import sqft_intel as sq
from sqft_intel.run_dir import RunDir
from tests.conftest import copy_run
from tests.stages.conftest import recipe_of, run_stages, snapshot


def group_of(fqn: str, ranks: dict) -> str:
    """A module's rank group: its own name when fixed, `model.layers.<i>.elastic` when elastic."""
    return fqn if fqn in ranks else ".".join(fqn.split(".")[:3]) + ".elastic"


def check_peft_adapter(folder: Path, ranks: dict, base: Path) -> dict:
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 8  # r_max of [8, 6, 4]
    assert Path(config["base_model_name_or_path"]) == base.resolve()
    assert set(config["target_modules"]) == set(config["rank_pattern"])
    assert len(config["rank_pattern"]) == 10  # q/k/v/up/down in 2 blocks
    weights = load_file(folder / "adapter_model.safetensors")
    for fqn, r in config["rank_pattern"].items():
        assert r == ranks[group_of(fqn, ranks)], fqn
        assert weights[f"base_model.model.{fqn}.lora_A.weight"].shape[0] == r, fqn
        assert weights[f"base_model.model.{fqn}.lora_B.weight"].shape[1] == r, fqn
    return config["rank_pattern"]


def test_heuristic_select_writes_a_peft_adapter_at_the_median_ranks(fp_run):
    run = RunDir(fp_run)
    rec = sq.load_stage(run.select, expect="select", require=("adapter_config.json",))
    assert rec.parent == "finetune" and rec.config["strategy"] == "heuristic"
    ranks = rec.metrics["ranks"]
    pattern = check_peft_adapter(run.select, ranks, run.sparsify)
    assert {g: r for g, r in ranks.items() if g.endswith(".elastic")} == {
        "model.layers.0.elastic": 6, "model.layers.1.elastic": 6}  # median of [8, 6, 4]
    assert {f: r for f, r in pattern.items() if "mlp" in f} == dict.fromkeys(
        [f for f in pattern if "mlp" in f], 8)  # not elastic: r_max


def test_custom_ranks_are_the_ones_written(tmp_path, fp_run, stage_recipe):
    out = copy_run(fp_run, tmp_path / "run", stages=("sparsify", "finetune"))
    run = RunDir(out)
    recipe = recipe_of(stage_recipe, {"select": {"strategy": "custom", "ranks": 4}})
    run_stages(recipe, out, "select")
    rec = sq.load_stage(run.select, expect="select")
    ranks = rec.metrics["ranks"]
    assert [r for g, r in ranks.items() if g.endswith(".elastic")] == [4, 4]
    pattern = check_peft_adapter(run.select, ranks, run.sparsify)
    assert sorted(f for f, r in pattern.items() if r == 4) == sorted(
        f for f in pattern if "self_attn" in f)
    heuristic = sq.load_stage(RunDir(fp_run).select).metrics["adapter_params"]
    assert rec.metrics["adapter_params"] < heuristic
    # reused while unchanged; the heuristic recipe recomputes it
    before = snapshot(run.select)
    run_stages(recipe, out, "select")
    assert snapshot(run.select) == before
    run_stages(recipe_of(stage_recipe), out, "select")
    assert sq.load_stage(run.select).metrics["ranks"] == sq.load_stage(RunDir(fp_run).select).metrics["ranks"]



def test_candidates_score_the_training_log_configurations_and_keep_the_best(
        tmp_path, fp_run, stage_recipe, monkeypatch):
    from types import SimpleNamespace

    from sqft_intel.adapters.api import adapter_modules
    from sqft_intel.search import training_candidates
    from sqft_intel.stages import select

    out = copy_run(fp_run, tmp_path / "run", stages=("sparsify", "finetune"))
    run = RunDir(out)
    recipe = recipe_of(stage_recipe, {"select": {"strategy": "candidates"}})
    assert recipe.splits.holdout  # a tenth of the 64 tiny train rows
    # what must be scored: the heuristic, then most-sampled and lowest-loss read off finetune's
    # own log and rank counts, each configuration once, in that order
    finetune = sq.load_stage(run.finetune, expect="finetune")
    train_log = [json.loads(x) for x in (run.finetune / "train_log.jsonl").read_text().splitlines()]
    assert len(train_log) == 4 and all(r["ranks"] for r in train_log)  # 4 steps, log_every 1
    heuristic = sq.load_stage(RunDir(fp_run).select).metrics["ranks"]
    space = {g: (8, 6, 4) if g.endswith(".elastic") else (8,) for g in heuristic}
    expected = training_candidates(space, heuristic, train_log, finetune.metrics["rank_counts"],
                                   budget=recipe.select.budget)
    assert len(expected) >= 3 and expected[1][0] == "most-sampled"
    winner = expected[-1][1]  # a lowest-loss one; the scorer below makes it the best

    def fake_score(model, *args, **kwargs):
        ranks = {m.group: m.active_rank for m in adapter_modules(model).values()}
        return SimpleNamespace(acc=0.9 if ranks == winner else 0.5, acc_norm=0.0)

    monkeypatch.setattr(select, "score_mc", fake_score)
    run_stages(recipe, out, "select")
    rec = sq.load_stage(run.select, expect="select")
    trials = [json.loads(x) for x in (run.select / "search_log.jsonl").read_text().splitlines()]
    assert [(t["origin"], t["ranks"]) for t in trials] == expected
    search = rec.metrics["search"]
    assert search["strategy"] == "candidates" and search["evaluations"] == len(expected)
    assert search["heuristic_score"] == 0.5 and search["best_score"] == 0.9
    assert search["best_index"] == len(expected) - 1
    assert rec.metrics["ranks"] == winner != heuristic
    assert rec.metrics["adapter_params"] == trials[-1]["params"]
    check_peft_adapter(run.select, winner, run.sparsify)
    front = json.loads((run.select / "pareto.json").read_text())
    assert max(p["score"] for p in front) == 0.9
