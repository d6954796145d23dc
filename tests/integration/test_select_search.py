"""`select` searches on the tiny model: scored on held-out train items, never on the eval split."""

import json

import pytest

from sqft_intel import load_stage
from sqft_intel.pipeline import eval_items, holdout_items, train_items
from sqft_intel.recipe import build_recipe, load_recipe_file
from tests.conftest import run_cli


@pytest.mark.parametrize("strategy", ["hill-climb", "evolution"])
def test_search_beats_or_matches_heuristic_on_holdout(tmp_path, tiny_recipe, strategy):
    out = tmp_path / "run"
    sets = ["--set", f"select.strategy={strategy}", "--set", "select.budget=6",
            "--set", "data.holdout_items=6", "--set", "select.population=3"]
    for stage in ("sparsify", "finetune", "select"):
        proc = run_cli(stage, "--recipe", str(tiny_recipe), "--out", str(out), "--no-progress", *sets)
        assert proc.returncode == 0, (stage, proc.stderr[-2000:])
    rec = load_stage(out / "select", expect="select")
    search = rec.metrics["search"]
    log = [json.loads(line) for line in (out / "select" / "search_log.jsonl").read_text().splitlines()]
    assert 1 < len(log) <= 6 and search["evaluations"] == len(log)
    assert log[0]["origin"] == "start" and log[0]["score"] == search["heuristic_score"]
    assert search["best_score"] >= search["heuristic_score"]
    best = log[search["best_index"]]
    assert best["score"] == search["best_score"]
    assert {g: r for g, r in best["ranks"].items()} == {g: rec.metrics["ranks"][g] for g in best["ranks"]}
    front = json.loads((out / "select" / "pareto.json").read_text())
    assert front and max(p["score"] for p in front) == search["best_score"]
    assert "held-out" in proc.stdout


def test_search_splits_are_disjoint(tiny_recipe):
    recipe = build_recipe(load_recipe_file(tiny_recipe), ("--set", {"data": {"holdout_items": 6}}))
    keys = lambda xs: {(i.query, i.choices) for i in xs}  # noqa: E731
    train, held, final = keys(train_items(recipe)), keys(holdout_items(recipe)), keys(eval_items(recipe))
    assert len(held) == 6 and train and final
    assert not train & held and not held & final


def test_search_without_holdout_is_refused(tmp_path, tiny_recipe):
    proc = run_cli("run", "--recipe", str(tiny_recipe), "--out", str(tmp_path / "r"),
                   "--set", "select.strategy=hill-climb", "--set", "data.holdout_items=0")
    assert proc.returncode == 2 and "holdout_items" in proc.stderr
    assert not (tmp_path / "r").exists()
