"""The chain `sqft run` walks: one record per stage, in order, read top to bottom.

Each stage module owns `check(recipe, ctx)` (what can be known before weights load), `run(recipe,
run_dir, *, parent, fingerprint, progress)` (load the parent stage, do the work, write its folder
through `artifacts.save_stage`) and the loaders later stages use. `evaluate` and `verify` read
stages and write reports, not stage folders, so they are not in the chain.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..recipe import Recipe
from ..run_dir import STAGE_DIRS
from . import evaluate, export, finetune, merge, quantize, select, sparsify, verify
from .check import CheckContext


def _always(recipe: Recipe) -> bool:
    return True


@dataclass(frozen=True)
class Stage:
    """Args:
    name: the stage's name (its CLI verb and `stage.json`'s `stage`).
    sections: the recipe sections its output depends on (with its parent: its fingerprint).
    parent: the stage whose folder it reads; when the recipe skips that one, its parent instead.
    check: `check(recipe, ctx)`, run before any weight is loaded.
    run: `run(recipe, run_dir, *, parent, fingerprint, progress)`.
    enabled: whether a recipe's chain includes the stage.
    """

    name: str
    sections: tuple[str, ...]
    parent: str | None
    check: Callable[[Recipe, CheckContext], None]
    run: Callable[..., None]
    enabled: Callable[[Recipe], bool] = _always

    @property
    def directory(self) -> str:
        return STAGE_DIRS[self.name]


STAGES: tuple[Stage, ...] = (
    Stage("sparsify", ("model", "data", "sparsify"), None, sparsify.check, sparsify.run),
    Stage("quantize", ("data", "quantize"), "sparsify", quantize.check, quantize.run,
          enabled=lambda r: r.finetune.adapters.quantized_base),  # only INT4 modes train on it
    Stage("finetune", ("data", "finetune"), "quantize", finetune.check, finetune.run),
    Stage("select", ("data", "select", "eval"), "finetune", select.check, select.run),
    Stage("merge", ("merge",), "select", merge.check, merge.run),
    Stage("export", ("export",), "merge", export.check, export.run,
          enabled=lambda r: r.export.enabled),
)
BY_NAME = {s.name: s for s in STAGES}


def chain(recipe: Recipe) -> tuple[Stage, ...]:
    """The stages a recipe runs, in order."""
    return tuple(s for s in STAGES if s.enabled(recipe))


def parent_of(recipe: Recipe, name: str) -> str | None:
    """The stage `name` reads: its declared parent, or the nearest enabled one above it."""
    parent = BY_NAME[name].parent
    while parent is not None and not BY_NAME[parent].enabled(recipe):
        parent = BY_NAME[parent].parent
    return parent


__all__ = ["STAGES", "Stage", "CheckContext", "chain", "parent_of", "evaluate", "verify"]
