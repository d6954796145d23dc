"""Every example recipe in recipes/ is valid for the bundled model as shipped: it builds, passes
`sqft`'s pre-flight checks (targets, over-long rows, holdout), and its training text is enough
for its calibration settings."""

from pathlib import Path

import pytest

import sqft_intel as sq

ROOT = Path(__file__).resolve().parents[2]
RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))


def test_the_recipes_folder_is_not_empty():
    assert RECIPES, "recipes/ holds no example recipe"


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_example_recipe_validates_and_calibrates(path, monkeypatch):
    from transformers import AutoTokenizer

    from sqft_intel.models import resolve_model

    monkeypatch.chdir(ROOT)  # recipes name their data files relative to the repository root
    recipe = sq.build_recipe(sq.load_recipe_file(path))
    sq.validate(recipe)
    tok = AutoTokenizer.from_pretrained(resolve_model(recipe.model.name_or_path))
    for cfg in (recipe.sparsify, recipe.quantize):
        ids = recipe.splits.calibration_ids(tok, cfg)
        assert tuple(ids.shape) == (cfg.calib_samples, cfg.calib_seq_len)
    assert recipe.splits.train and recipe.splits.eval
