"""Training rows beyond multiple choice (SFT data), one format per file, told by the rows' keys.

    messages            [{"role": "system"|"user"|"assistant", "content": str}, ...], rendered
                        with the tokenizer's chat template; trained on the assistant turns
    prompt, completion  trained on the completion
    text                trained on every token
    instruction, output (+ input)   Alpaca: rendered with `ALPACA_PROMPT`, trained on the output
    query, choices, gold            multiple choice (`data.MCItem`), trained on the gold choice

A row with the keys of several formats is read as the first of that list (Alpaca files often
carry a rendered `text` too). Each SFT row becomes an `SFTItem`: its text in segments, each a
prompt or a completion; `finetune/loop.py` tokenizes them into ids and a loss mask.
`data.prompt_format` renders MC items only: these formats carry their own rendering.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .data import MCItem, _doc_to_item, _show, read_rows
from .errors import ConfigError

# The Alpaca prompt (tatsu-lab/stanford_alpaca) that LLM-Adapters' finetune.py trains with, and with
# it SQFT's math and commonsense runs; `{input}` holds "### Input:\n{input}\n\n" or nothing.
ALPACA_PROMPT = ("Below is an instruction that describes a task{context}. Write a response that "
                 "appropriately completes the request.\n\n### Instruction:\n{instruction}\n\n"
                 "{input}### Response:\n")
_ALPACA_CONTEXT = ", paired with an input that provides further context"

ROLES = ("system", "user", "assistant")
# (format, its keys): a row is the first format any of whose keys it holds
_SIGNATURES = (("messages", ("messages",)), ("alpaca", ("instruction", "output")),
               ("prompt-completion", ("prompt", "completion")), ("mc", ("query", "choices", "gold")),
               ("text", ("text",)))
FORMATS_HINT = ('one format per file: {"messages": [{"role", "content"}, ...]}, {"prompt", '
                '"completion"}, {"text"}, {"instruction", "input" (optional), "output"} or '
                '{"query", "choices", "gold"}')


@dataclass(frozen=True)
class SFTItem:
    """One SFT row as text segments in order; `completion[k]` says whether segment k is trained
    on without `finetune.train_on_prompt` (a completion, an output, an assistant turn).

    `messages` rows hold their turns in `messages` and no segments until `render_messages`
    (which needs the tokenizer's chat template) fills them in.
    """

    format: str
    segments: tuple[str, ...] = ()
    completion: tuple[bool, ...] = ()
    where: str = ""  # file and line, for error messages
    messages: tuple[tuple[str, str], ...] = ()  # (role, content)

    @property
    def text(self) -> str:
        """The rendered row (prompt and completion): calibration text."""
        if self.messages and not self.segments:
            raise ValueError(f"{self.where}: render `messages` rows first (render_messages)")
        return "".join(self.segments)


def row_format(row: dict) -> str | None:
    """The format a row's keys say, or None."""
    return next((fmt for fmt, keys in _SIGNATURES if any(k in row for k in keys)), None)


def _string(row: dict, key: str, where: str, *, empty_ok: bool = False) -> str:
    value = row[key]
    if not isinstance(value, str):
        raise ConfigError(f"{where}: `{key}` must be a string, got {_show(value)}; quote it.")
    if not empty_ok and not value.strip():
        raise ConfigError(f"{where}: `{key}` is empty ({_show(value)}): nothing to train on; "
                          "fill it in or drop the row.")
    return value


def _require(row: dict, keys: tuple[str, ...], fmt: str, where: str) -> None:
    missing = [k for k in keys if k not in row]
    if missing:
        named = ", ".join(f"`{k}`" for k in missing)
        raise ConfigError(f"{where}: a `{fmt}` row (keys {sorted(row)}) lacks {named}; a "
                          f"`{fmt}` row holds {', '.join(f'`{k}`' for k in keys)}.")


def _messages(row: dict, where: str) -> SFTItem:
    msgs = row["messages"]
    if not isinstance(msgs, list) or not msgs:
        raise ConfigError(f"{where}: `messages` must be a non-empty list of "
                          f'{{"role", "content"}} objects, got {_show(msgs)}.')
    turns = []
    for k, m in enumerate(msgs):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise ConfigError(f"{where}: `messages[{k}]` must be an object with `role` and "
                              f"`content`, got {_show(m)}.")
        if m["role"] not in ROLES:
            raise ConfigError(f"{where}: `messages[{k}].role`={_show(m['role'])}; use one of "
                              f"{list(ROLES)}.")
        content = m["content"]
        if not isinstance(content, str):
            raise ConfigError(f"{where}: `messages[{k}].content` must be a string, got "
                              f"{_show(content)}.")
        if m["role"] == "assistant" and not content.strip():
            raise ConfigError(f"{where}: `messages[{k}]` is an empty assistant turn: nothing to "
                              "train on; write the reply or drop the turn.")
        turns.append((m["role"], content))
    if turns[0][0] == "assistant":
        raise ConfigError(f"{where}: the conversation starts with an assistant turn; start it with "
                          "a system or user turn (the prompt the reply answers).")
    if not any(r == "assistant" for r, _ in turns):
        raise ConfigError(f"{where}: the conversation has no assistant turn: nothing to train "
                          "on; add the assistant's reply or drop the row.")
    return SFTItem("messages", where=where, messages=tuple(turns))


def _prompt_completion(row: dict, where: str) -> SFTItem:
    _require(row, ("prompt", "completion"), "prompt-completion", where)
    prompt = _string(row, "prompt", where, empty_ok=True)
    return SFTItem("prompt-completion", (prompt, _string(row, "completion", where)), (False, True),
                   where)


def _text(row: dict, where: str) -> SFTItem:
    return SFTItem("text", (_string(row, "text", where),), (True,), where)


def _alpaca(row: dict, where: str) -> SFTItem:
    _require(row, ("instruction", "output"), "alpaca", where)
    instruction, output = _string(row, "instruction", where), _string(row, "output", where)
    extra = _string(row, "input", where, empty_ok=True) if "input" in row else ""
    prompt = ALPACA_PROMPT.format(context=_ALPACA_CONTEXT if extra else "", instruction=instruction,
                                  input=f"### Input:\n{extra}\n\n" if extra else "")
    return SFTItem("alpaca", (prompt, output), (False, True), where)


_PARSERS = {"messages": _messages, "prompt-completion": _prompt_completion, "text": _text,
            "alpaca": _alpaca, "mc": _doc_to_item}


def parse_row(row: dict, where: str) -> SFTItem | MCItem:
    """One training row in the format its keys say (`row_format`), as `load_train_file` reads it.

    Raises:
        ConfigError: the row fits no format, or a key is missing, mistyped or empty.
    """
    fmt = row_format(row)
    if fmt is None:
        raise ConfigError(f"{where}: the row fits no training format (got keys {sorted(row)}); "
                          f"rows are {FORMATS_HINT}.")
    return _PARSERS[fmt](row, where)


def load_train_file(path: str | Path) -> list[MCItem] | list[SFTItem]:
    """The rows of a training file (JSONL, `.jsonl.gz` or a `.json` array), all of one format:
    `MCItem`s for multiple-choice rows, else `SFTItem`s (`messages` rows not yet rendered).

    Raises:
        ConfigError: a row that fits no format, a row of another format than the file's first,
            a missing key, a wrong type or an empty completion, named by file and line.
    """
    items: list = []
    first: tuple[str, str] | None = None  # (format, where)
    for where, row in read_rows(path, what=f"training rows ({FORMATS_HINT})"):
        if not isinstance(row, dict):
            raise ConfigError(f"{where}: a row must be a JSON object; got {_show(row)}. Rows are "
                              f"{FORMATS_HINT}.")
        fmt = row_format(row)
        if fmt is None:
            raise ConfigError(f"{where}: the row fits no training format (got keys {sorted(row)}); "
                              f"rows are {FORMATS_HINT}.")
        if first is None:
            first = (fmt, where)
        elif fmt != first[0]:
            raise ConfigError(f"{where}: a `{fmt}` row in a file of `{first[0]}` rows (as "
                              f"{first[1]}); a file holds one format: convert the rows or split "
                              "the file.")
        items.append(_PARSERS[fmt](row, where))
    return items


def item_format(items: list) -> str:
    """`mc` or the SFT format of a list of training items (one format per file)."""
    return items[0].format if items and isinstance(items[0], SFTItem) else "mc"


def render_messages(items: list[SFTItem], tokenizer, *, source: str = "the model") -> list[SFTItem]:
    """`messages` rows through the tokenizer's chat template, in segments: the text up to each
    assistant turn (its header included) is prompt, the turn as the template writes it (its
    end-of-turn included) is completion. Other items are returned as they are.

    Each assistant turn is the difference between the conversation rendered up to it with the
    generation prompt and rendered with it, so templates must render a conversation prefix by
    prefix (chat templates do, so that generation continues the rendered prompt).

    Raises:
        ConfigError: the tokenizer has no chat template, or it fails on or reorders a row.
    """
    if not any(it.messages and not it.segments for it in items if isinstance(it, SFTItem)):
        return items
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError(f"`messages` rows are rendered with the tokenizer's chat template; "
                          f"{source}'s has none. Write the rows as `prompt`/`completion` (rendered "
                          "as the model expects) or give a model with a chat template.")
    return [dataclasses.replace(it, **_segments(it, tokenizer, source))
            if isinstance(it, SFTItem) and it.messages and not it.segments else it for it in items]


def _segments(item: SFTItem, tokenizer, source: str) -> dict[str, Any]:
    msgs = [{"role": r, "content": c} for r, c in item.messages]

    def render(k: int, gen: bool) -> str:
        try:
            return tokenizer.apply_chat_template(msgs[:k], tokenize=False, add_generation_prompt=gen)
        except Exception as e:  # jinja raises what the template says (e.g. "roles must alternate")
            raise ConfigError(f"{item.where}: {source}'s chat template cannot render this "
                              f"conversation ({type(e).__name__}: {e}); fix the row's turns.") from e

    segments, completion, done = [], [], ""
    for k, (role, _) in enumerate(item.messages):
        if role != "assistant":
            continue
        head, full = render(k, True), render(k + 1, False)
        if not (head.startswith(done) and full.startswith(head) and len(full) > len(head)):
            raise ConfigError(
                f"{item.where}: {source}'s chat template does not render this conversation turn "
                f"by turn (the text before assistant turn `messages[{k}]` changes once the turn "
                "is added), so the assistant turns cannot be told apart; write the rows as "
                "`prompt`/`completion` rendered as the model expects.")
        segments += [head[len(done):], full[len(head):]]
        completion += [False, True]
        done = full
    rest = render(len(msgs), False)
    if rest.startswith(done) and len(rest) > len(done):  # turns after the last reply: prompt only
        segments.append(rest[len(done):])
        completion.append(False)
    return {"segments": tuple(segments), "completion": tuple(completion)}
