"""What every stage's `check` receives: the recipe's model skeleton and which stages run now."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..errors import ConfigError
from ..targets import matches


@dataclass(frozen=True)
class CheckContext:
    """Args:
    skeleton: the recipe's model on the meta device (shapes and module names, no weights).
    running: the stages this command runs; a check tests its environment and inputs only when
        its own stage is among them, and the recipe's consistency always.
    """

    skeleton: nn.Module
    running: frozenset[str]


def require_covered(targets, suffixes: tuple[str, ...], who: str, why: str, section: str) -> None:
    """Every layer in `targets` must also match `section`'s target_modules."""
    missing = [f for f in targets if not matches(f, suffixes)]
    if missing:
        raise ConfigError(f"{who} {missing[:2]}, which {why}; add their suffixes to "
                          f"`{section}.target_modules`.")


def require_train_items(recipe) -> None:
    if not recipe.splits.train:
        raise ConfigError("the training data is empty; check `data.task` / `data.train_file`.")


def require_calibration_text(recipe, cfg) -> None:
    """Enough training text for `cfg`'s calib_samples x calib_seq_len tokens (sparsify or GPTQ),
    found before a model is loaded."""
    recipe.splits.calibration_ids(recipe.splits.tokenizer, cfg)
