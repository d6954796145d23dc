"""Commonsense reasoning by generation: the commonsense_170k protocol (LLM-Adapters, Hu et al. 2023;
Shears and SQFT fine-tune and score with it), rebuilt from the bundled splits.

Each item is an Alpaca instruction (no input) asking for a label word; the response is "the
correct answer is <word>". Train rows come from the bundled train splits of the eight tasks
(`data.TASKS` names), evaluation items from their validation splits. Instructions, as in the
commonsense_170k files (`k` counts from 1):

    boolq       Please answer the following question with true or false, question: {question}?
                \\n\\nAnswer format: true/false                                 -> true | false
    piqa        Please choose the correct solution to the question: {goal}\\n\\nSolution1: {sol1}
                \\n\\nSolution2: {sol2}\\n\\nAnswer format: solution1/solution2  -> solution<k>
    socialiqa   Please choose the correct answer to the question: {context} {question}\\n\\n
    arc_easy,   Answer1: {a1} Answer2: {a2} ...\\n\\nAnswer format: answer1/answer2/...
    arc_challenge, openbookqa  (the question; as many answers as choices)   -> answer<k>
    hellaswag   Please choose the correct ending to complete the given sentence: {activity}:
                {context}\\n\\nEnding1: {e1} Ending2: ...\\n\\nAnswer format: ending1/.../ending4
                                                                              -> ending<k>
    winogrande  Please choose the correct answer to fill in the blank to complete the given
                sentence: {sentence}\\n\\nOption1: {o1} Option2: {o2} Answer format: option1/option2
                                                                              -> option<k>

BoolQ is asked without its passage, as commonsense_170k does. The texts come from `data.py`'s
multiple-choice items (their question parsed back out of the MC prompt), Winogrande's from its
raw rows (its MC choices are whole sentences). Scoring (metric `acc`): the first occurrence in
the generation of any of the task's label words (case-sensitive substring search over true/false,
solution1-2, answer1-5, ending1-4, option1-2, as LLM-Adapters' `extract_answer`) must equal the
gold word; no label word is wrong. Generation: 32 new tokens (the reference's budget), no stop
string beyond the tokenizer's end tokens, so the first label word is found as the reference finds it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import cache

from .. import data
from .spec import GenTask

TASKS = ("boolq", "piqa", "socialiqa", "hellaswag", "winogrande", "arc_easy", "arc_challenge",
         "openbookqa")
_ANSWERS = tuple(f"answer{k}" for k in range(1, 6))
LABELS: dict[str, tuple[str, ...]] = {
    "boolq": ("true", "false"),
    "piqa": ("solution1", "solution2"),
    "socialiqa": _ANSWERS, "arc_easy": _ANSWERS, "arc_challenge": _ANSWERS, "openbookqa": _ANSWERS,
    "hellaswag": tuple(f"ending{k}" for k in range(1, 5)),
    "winogrande": ("option1", "option2"),
}
_OUTPUT = "the correct answer is {}"


def task_name(task: str) -> str:
    """The `GEN_TASKS` key of one commonsense task: `commonsense_<task>`."""
    return f"commonsense_{task}"


def _spec(task: str) -> GenTask:
    pattern = re.compile("|".join(LABELS[task]))

    def extract(generation: str) -> dict[str, str | None]:
        found = pattern.search(generation)
        return {"acc": found.group(0) if found else None}

    def correct(extracted: str | None, gold: str) -> bool:
        return extracted is not None and extracted == gold

    return GenTask(task_name(task), (), 32, ("acc",), extract, correct)


SPECS = {task_name(t): _spec(t) for t in TASKS}


def _between(text: str, head: str, tail: str) -> str:
    """`text` without `head` and `tail`; they must be there (the MC prompt's shape)."""
    if not (text.startswith(head) and text.endswith(tail)):
        raise ValueError(f"unexpected multiple-choice prompt {text[:80]!r}: expected "
                         f"{head!r} ... {tail!r}; data.py's prompt changed, update commonsense.py")
    return text[len(head):len(text) - len(tail)]


def _listed(word: str, choices: tuple[str, ...] | list[str]) -> str:
    return " ".join(f"{word}{k}: {c}" for k, c in enumerate(choices, 1))


def _answer_format(word: str, n: int) -> str:
    return "Answer format: " + "/".join(f"{word}{k}" for k in range(1, n + 1))


def _choose(question: str, choices) -> str:
    return (f"Please choose the correct answer to the question: {question}\n\n"
            f"{_listed('Answer', choices)}\n\n{_answer_format('answer', len(choices))}")


def _boolq(it: data.MCItem) -> tuple[str, str]:
    question = _between(it.query.rsplit("\nQuestion: ", 1)[-1], "", "?\nAnswer:")
    return (f"Please answer the following question with true or false, question: {question}?"
            "\n\nAnswer format: true/false", "true" if it.gold == 0 else "false")  # MC: yes, no


def _piqa(it: data.MCItem) -> tuple[str, str]:
    goal = _between(it.query, "Goal: ", "\nAnswer:")
    solutions = "\n\n".join(f"Solution{k}: {c}" for k, c in enumerate(it.choices, 1))
    return (f"Please choose the correct solution to the question: {goal}\n\n{solutions}\n\n"
            f"{_answer_format('solution', 2)}", f"solution{it.gold + 1}")


def _question(it: data.MCItem) -> tuple[str, str]:  # SIQA, ARC, OpenBookQA
    return _choose(_between(it.query, "Question: ", "\nAnswer:"), it.choices), f"answer{it.gold + 1}"


def _hellaswag(it: data.MCItem) -> tuple[str, str]:
    return (f"Please choose the correct ending to complete the given sentence: {it.query}\n\n"
            f"{_listed('Ending', it.choices)}\n\n{_answer_format('ending', len(it.choices))}",
            f"ending{it.gold + 1}")


def _winogrande(doc: dict) -> tuple[str, str]:
    return ("Please choose the correct answer to fill in the blank to complete the given sentence: "
            f"{doc['sentence']}\n\n{_listed('Option', (doc['option1'], doc['option2']))} "
            f"{_answer_format('option', 2)}", f"option{doc['answer']}")


_FROM_MC: dict[str, Callable[[data.MCItem], tuple[str, str]]] = {
    "boolq": _boolq, "piqa": _piqa, "socialiqa": _question, "arc_easy": _question,
    "arc_challenge": _question, "openbookqa": _question, "hellaswag": _hellaswag,
}


def _winogrande_docs(split: str) -> list[dict]:
    return data.load_train_docs("winogrande") if split == "train" else data.load_val_docs("winogrande")


@cache
def pairs(task: str, split: str) -> tuple[tuple[str, str], ...]:
    """(instruction, gold label word) for each item of a task's `train` or `validation` split."""
    if task == "winogrande":
        return tuple(_winogrande(d) for d in _winogrande_docs(split))
    mc = data.load_train_items(task) if split == "train" else data.load_val_items(task)
    return tuple(_FROM_MC[task](it) for it in mc)


def row(instruction: str, label: str) -> dict[str, str]:
    """An Alpaca row (`sft.py` reads it): the instruction and "the correct answer is <label>"."""
    return {"instruction": instruction, "output": _OUTPUT.format(label)}
