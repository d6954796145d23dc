"""`select` searches on the tiny model: scored on held-out train items, never on the eval split."""

import json

import pytest

from sqft_intel import load_stage
from sqft_intel.recipe import build_recipe, load_recipe_file
from tests.conftest import copy_run


@pytest.mark.parametrize("strategy", ["hill-climb", "evolution"])
def test_search_beats_or_matches_heuristic_on_holdout(tmp_path, tiny_recipe, tiny_fp_run, sqft_main,
                                                       strategy):
    # the session's sparse model and adapters (trained with the same 6 items held out: a tenth
    # of the 64 train rows, so `data.holdout_items=6` splits the data as they were split)
    out = copy_run(tiny_fp_run[0], tmp_path / "run", stages=("sparsify", "finetune"))
    as_trained = build_recipe(load_recipe_file(tiny_recipe)).splits
    assert build_recipe(load_recipe_file(tiny_recipe), {"data": {"holdout_items": 6}}).splits.train \
        == as_trained.train and len(as_trained.holdout) == 6
    sets = ["--set", f"select.strategy={strategy}", "--set", "select.budget=6",
            "--set", "data.holdout_items=6", "--set", "select.population=3"]
    code, stdout, err = sqft_main("select", "--recipe", tiny_recipe, "--out", out, "--no-progress",
                                  *sets)
    assert code == 0, err[-2000:]
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
    assert "held-out" in stdout


def test_search_splits_are_disjoint(tiny_recipe):
    recipe = build_recipe(load_recipe_file(tiny_recipe), ("--set", {"data": {"holdout_items": 6}}))
    keys = lambda xs: {(i.query, i.choices) for i in xs}  # noqa: E731
    train, held, final = keys(recipe.splits.train), keys(recipe.splits.holdout), keys(recipe.splits.eval)
    assert len(held) == 6 and train and final
    assert not train & held and not held & final


def test_search_without_holdout_is_refused(tmp_path, tiny_recipe, sqft_main):
    code, _, err = sqft_main("run", "--recipe", tiny_recipe, "--out", tmp_path / "r",
                             "--set", "select.strategy=hill-climb", "--set", "data.holdout_items=0")
    assert code == 2 and "holdout_items" in err
    assert not (tmp_path / "r").exists()
