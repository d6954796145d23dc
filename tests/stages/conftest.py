"""Runs of the tiny model built stage by stage in this process with `sq.run_stage`, once per
session. Tests read them in place; a test that runs a stage into a run works on a copy
(`tests.conftest.copy_run`), so every test sees the same finished stages."""

from __future__ import annotations

from pathlib import Path

import pytest

import sqft_intel as sq
from tests.conftest import copy_run, write_tiny_recipe

# the INT4 chain on the tiny model: g32 divides every layer; lr: big enough steps to cross a grid step
QA = {"finetune": {"mode": "qa-sparsepeft", "lr": 0.02}, "quantize": {"group_size": 32}}


def recipe_of(path: Path, overrides: dict | None = None) -> sq.Recipe:
    """The tiny recipe file with `overrides` (a partial recipe) laid over it."""
    return sq.build_recipe(sq.load_recipe_file(path), overrides or {})


def run_stages(recipe: sq.Recipe, out: Path, *names: str) -> Path:
    for name in names:
        sq.run_stage(recipe, out, name, progress=False)
    return out


@pytest.fixture(scope="session")
def stage_recipe(tmp_path_factory, tiny_model_dir, tiny_task) -> Path:
    """`write_tiny_recipe`'s file: FP SparsePEFT, ranks [8, 6, 4], 4 steps, no export."""
    return write_tiny_recipe(tmp_path_factory.mktemp("stage-recipe"), tiny_model_dir, *tiny_task)


@pytest.fixture(scope="session")
def sparse_run(tmp_path_factory, stage_recipe) -> Path:
    """OUT holding only the sparsify stage (50% Wanda)."""
    out = tmp_path_factory.mktemp("stages-sparse") / "run"
    return run_stages(recipe_of(stage_recipe), out, "sparsify")


@pytest.fixture(scope="session")
def fp_run(tmp_path_factory, stage_recipe, sparse_run) -> Path:
    """`sparse_run` + SparsePEFT finetune -> heuristic select -> masked merge."""
    out = copy_run(sparse_run, tmp_path_factory.mktemp("stages-fp") / "run")
    return run_stages(recipe_of(stage_recipe), out, "finetune", "select", "merge")


@pytest.fixture(scope="session")
def int4_run(tmp_path_factory, stage_recipe, sparse_run) -> Path:
    """`sparse_run` + quantize (gptq, g32) -> QA-SparsePEFT finetune -> select -> INT4 merge."""
    out = copy_run(sparse_run, tmp_path_factory.mktemp("stages-int4") / "run")
    return run_stages(recipe_of(stage_recipe, QA), out, "quantize", "finetune", "select", "merge")


def snapshot(folder: Path) -> tuple:
    """What rewriting a stage folder changes: its inode and mtime, stage.json's text and mtime."""
    meta = folder / "stage.json"
    return (folder.stat().st_ino, folder.stat().st_mtime_ns, meta.read_text(),
            meta.stat().st_mtime_ns)
