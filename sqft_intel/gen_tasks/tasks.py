"""The bundled generative tasks by name: scoring specs (`GEN_TASKS`), evaluation items and
training rows. Dispatch is one `match` per loader."""

from __future__ import annotations

import difflib

from .. import sft
from ..data import subsample
from ..errors import ConfigError
from . import commonsense, gsm8k, minerva_math
from .spec import GenItem, GenTask

# GenItem.task -> how its generations are scored; commonsense has one entry per task
GEN_TASKS: dict[str, GenTask] = {"gsm8k": gsm8k.TASK, "math500": minerva_math.TASK,
                                 **commonsense.SPECS}
EVAL_TASKS = ("gsm8k", "math500", "commonsense", *commonsense.SPECS)
TRAIN_TASKS = ("math", "commonsense")


def _unknown(what: str, task: str, allowed: tuple[str, ...]) -> ConfigError:
    close = difflib.get_close_matches(task, allowed, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return ConfigError(f"{what}={task!r} is not a bundled generative task; use one of "
                       f"{list(allowed)}.{hint}")


def _check_n(n: int | None) -> None:
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise ConfigError(f"`n`={n!r} must be a positive integer (items to sample) or None (all).")


def train_task_for(task: str) -> str:
    """The bundled training rows an evaluation task trains on when no `data.train_file` is given:
    `math` for gsm8k and math500 (no GSM8K train split is bundled), `commonsense` for commonsense."""
    if task in ("gsm8k", "math500", "math"):
        return "math"
    if task == "commonsense" or task in commonsense.SPECS:
        return "commonsense"
    raise _unknown("`task`", task, (*EVAL_TASKS, *TRAIN_TASKS))


def _parse(row: dict, where: str) -> sft.SFTItem:
    return sft.parse_row(row, where)  # the same parser as a user's train file


def _commonsense_items(task: str) -> list[GenItem]:
    name = commonsense.task_name(task)
    out = []
    for k, (instruction, label) in enumerate(commonsense.pairs(task, "validation")):
        row = commonsense.row(instruction, label)
        prompt = _parse(row, f"{name} validation item {k}").segments[0]  # as trained: Alpaca
        out.append(GenItem(f"{name}/{k}", name, prompt, label, row["output"]))
    return out


def load_eval_items(task: str, n: int | None = None, seed: int = 0, *,
                    num_fewshot: int | None = None) -> list[GenItem]:
    """Evaluation items of a bundled generative task.

    Args:
        task: `gsm8k` (1319 GSM8K test problems), `math500` (MATH-500), `commonsense` (the
            validation splits of the eight commonsense tasks) or one `commonsense_<task>`.
        n: A seeded sample of `n` items (for `commonsense`, `n` per task); None: all.
        seed: Sampling seed (`data.subsample`).
        num_fewshot: Exemplars in each prompt: gsm8k 0-8 (default 5), math500 0-4 (default 0);
            commonsense takes none.

    Returns:
        The items, in the source order when `n` is None; commonsense tasks one after another.

    Raises:
        ConfigError: an unknown task, a bad `n` or `num_fewshot` out of range.
    """
    _check_n(n)
    if task not in EVAL_TASKS:
        raise _unknown("`task`", task, EVAL_TASKS)
    default, most = {"gsm8k": (gsm8k.DEFAULT_SHOTS, len(gsm8k.exemplars())),
                     "math500": (0, minerva_math.MAX_SHOTS)}.get(task, (0, 0))
    shots = default if num_fewshot is None else num_fewshot
    if isinstance(shots, bool) or not isinstance(shots, int) or not 0 <= shots <= most:
        raise ConfigError(f"`num_fewshot`={num_fewshot!r} for `{task}`: use an integer in "
                          f"0..{most} (default {default}).")
    match task:
        case "gsm8k":
            return subsample(gsm8k.items(shots), n, seed)
        case "math500":
            return subsample(minerva_math.items(shots), n, seed)
        case "commonsense":
            return [it for t in commonsense.TASKS for it in subsample(_commonsense_items(t), n, seed)]
        case _:
            return subsample(_commonsense_items(task.removeprefix("commonsense_")), n, seed)


def load_train_rows(task: str, n: int | None = None, seed: int = 0) -> list[dict[str, str]]:
    """Bundled SFT training rows, in a format `sft.load_train_file` reads.

    Args:
        task: `math` (the 4500 MATH test problems outside MATH-500, `prompt`/`completion`),
            `commonsense` (the eight train splits, Alpaca `instruction`/`output`), or an
            evaluation task, which trains on its `train_task_for` rows.
        n: A seeded sample of `n` rows from all of them (commonsense: from the union of the eight
            splits, so each task keeps its share, as in commonsense_170k); None: all.
        seed: Sampling seed (`data.subsample`).

    Raises:
        ConfigError: an unknown task or a bad `n`.
    """
    _check_n(n)
    match train_task_for(task):
        case "math":
            rows = minerva_math.train_rows()
        case _:
            rows = [commonsense.row(*p) for t in commonsense.TASKS
                    for p in commonsense.pairs(t, "train")]
    return subsample(rows, n, seed)


def load_train_sft(task: str, n: int | None = None, seed: int = 0) -> list[sft.SFTItem]:
    """`load_train_rows` parsed as `sft.load_train_file` parses a file of them: `SFTItem`s ready
    for fine-tuning (loss on the completion/output)."""
    name = train_task_for(task)
    return [_parse(row, f"bundled `{name}` row {k}")
            for k, row in enumerate(load_train_rows(task, n, seed))]


def score(item: GenItem, generation: str) -> dict[str, tuple[str | None, bool]]:
    """{metric: (extracted answer, correct)} of one generation for `item`."""
    return GEN_TASKS[item.task].score(generation, item.gold)
