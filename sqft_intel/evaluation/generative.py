"""Scoring generations of a generative task: accuracy per metric and one record per item.

The task decides what an answer is (`extract`) and when it is right (`correct`); this module only
applies them, counts, and writes the per-item records a person reads to see the failures.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from ..artifacts import write_text_atomic


class GenItemLike(Protocol):
    """What scoring reads of an item (`gen_tasks.GenItem`)."""

    id: str
    task: str
    prompt: str
    gold: str


class GenTaskLike(Protocol):
    """What scoring needs of a task (`gen_tasks.GenTask`)."""

    name: str
    metrics: tuple[str, ...]

    def extract(self, generation: str) -> dict[str, str | None]: ...

    def correct(self, extracted: str | None, gold: str) -> bool: ...


def score_generative(task: GenTaskLike, items: Sequence[GenItemLike], generations: Sequence[str]
                     ) -> tuple[dict, list[dict]]:
    """Accuracy of `generations` (one per item, in order) under each of the task's metrics.

    Returns:
        (summary, records). summary: `{"task", "n", "accuracy": {metric: float},
        "no_answer": {metric: items where nothing was extracted}}`. records, one per item:
        `{"id", "task", "prompt", "generation", "extracted": {metric: answer | None}, "gold",
        "correct": {metric: bool}}`.

    Raises:
        ValueError: the counts of items and generations differ.
    """
    if len(items) != len(generations):
        raise ValueError(f"{len(items)} items but {len(generations)} generations; "
                         "pass one generation per item, in the items' order.")
    hits = dict.fromkeys(task.metrics, 0)
    missing = dict.fromkeys(task.metrics, 0)
    records = []
    for item, text in zip(items, generations, strict=True):
        found = task.extract(text)
        extracted = {m: found[m] for m in task.metrics}  # a metric the task does not fill: KeyError
        correct = {m: bool(task.correct(extracted[m], item.gold)) for m in task.metrics}
        for m in task.metrics:
            hits[m] += correct[m]
            missing[m] += extracted[m] is None
        records.append({"id": item.id, "task": item.task, "prompt": item.prompt,
                        "generation": text, "extracted": extracted, "gold": item.gold,
                        "correct": correct})
    n = len(items)
    summary = {"task": task.name, "n": n,
               "accuracy": {m: hits[m] / n if n else 0.0 for m in task.metrics},
               "no_answer": missing}
    return summary, records


def write_records(path: Path, records: Sequence[dict]) -> Path:
    """Write `records` as JSONL, one JSON object a line, atomically (a temporary sibling renamed
    over `path`). Non-ASCII characters are \\u-escaped: the file reads the same in any locale."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in records))


def read_records(path: Path) -> list[dict]:
    """The records `write_records` wrote."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line]
