"""What a generative task is: its items (`GenItem`) and how a generation is scored (`GenTask`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class GenItem:
    """One generative evaluation item.

    Args:
        id: Stable name of the item, `<task>/<id in the source split>`.
        task: The `GEN_TASKS` key whose `GenTask` scores this item.
        prompt: The exact text the model continues, few-shot exemplars included; no chat
            template is applied here.
        gold: The reference final answer, already normalized the way the task's `correct`
            compares it.
        reference: The full worked solution (for reading failures), "" when the source has none.
    """

    id: str
    task: str
    prompt: str
    gold: str
    reference: str = ""


@dataclass(frozen=True)
class GenTask:
    """How a task generates and scores.

    Args:
        name: The task's key in `GEN_TASKS` (and `GenItem.task`).
        stop: Stop strings cut from the generation; the backends add the tokenizer's end tokens.
        max_new_tokens: Default generation budget.
        metrics: Metric names, in the order `extract` returns them.
        extract: generation -> {metric: extracted answer, or None when nothing was found}.
        correct: (extracted, gold) -> whether the answer counts; None is never correct.
    """

    name: str
    stop: tuple[str, ...]
    max_new_tokens: int
    metrics: tuple[str, ...]
    extract: Callable[[str], dict[str, str | None]]
    correct: Callable[[str | None, str], bool]

    def score(self, generation: str, gold: str) -> dict[str, tuple[str | None, bool]]:
        """{metric: (extracted answer, correct)} for one generation."""
        return {m: (a, self.correct(a, gold)) for m, a in self.extract(generation).items()}
