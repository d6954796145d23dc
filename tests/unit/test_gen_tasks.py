"""Bundled generative tasks (sqft_intel/gen_tasks): item counts and splits, prompt shapes, gold
answers, every extractor on hand-written generations, commonsense rows and label words, and
agreement of our GSM8K scoring with lm-eval's own filters and metric. No model is loaded."""

import re
from pathlib import Path

import pytest

from sqft_intel import ConfigError
from sqft_intel.gen_tasks import (
    GEN_TASKS,
    commonsense,
    gsm8k,
    load_eval_items,
    load_train_rows,
    load_train_sft,
    math_answer,
    minerva_math,
    score,
    train_task_for,
)
from sqft_intel.sft import ALPACA_PROMPT

# ---------------------------------------------------------------- GSM8K


def test_gsm8k_items_are_the_test_split_with_lm_eval_prompts():
    items = load_eval_items("gsm8k")
    assert len(items) == 1319 and len({it.id for it in items}) == 1319
    first = items[0]
    assert first.gold == "18" and first.reference.endswith("#### 18")
    blocks = first.prompt.split("\n\n")
    assert len(blocks) == gsm8k.DEFAULT_SHOTS + 1
    for block in blocks[:-1]:  # exemplars: Q/A with a chain of thought ending in GSM8K's answer line
        question, answer = re.fullmatch(r"Question: (.+)\nAnswer: (.+)", block, re.S).groups()
        number = answer.rsplit("\n#### ", 1)[1]
        assert answer.rsplit("\n", 1)[0].endswith(f"So the answer is {number}.")
    assert blocks[-1].startswith("Question: Janet") and first.prompt.endswith("\nAnswer:")
    assert all(re.fullmatch(r"-?\d+", it.gold) for it in items)  # normalized: no commas, $ or "."


def test_gsm8k_shots_are_configurable_and_checked():
    assert load_eval_items("gsm8k", 1, num_fewshot=0)[0].prompt.startswith("Question: ")
    assert load_eval_items("gsm8k", 1, num_fewshot=0)[0].prompt.count("Question:") == 1
    assert load_eval_items("gsm8k", 1, num_fewshot=8)[0].prompt.count("Question:") == 9
    with pytest.raises(ConfigError, match=r"num_fewshot.*0\.\.8"):
        load_eval_items("gsm8k", num_fewshot=9)


@pytest.mark.parametrize("generation, strict, flexible", [
    ("She makes 9 * 2 = 18 dollars.\n#### 18", "18", "18"),
    ("The total is $1,000.\n#### 1,000", "1,000", "1,000"),
    ("#### -3.5 and then 7", "-3.5", "7"),            # flexible takes the last number
    ("So the answer is $18.", None, "$18."),           # no "#### ": strict finds nothing
    ("I have 3 apples and 12 pears", None, "12"),
    ("no numbers at all", None, None),
    ("#### 5\n#### 6", "5", "6"),                      # strict takes the first
])
def test_gsm8k_extraction(generation, strict, flexible):
    assert gsm8k.extract(generation) == {"strict-match": strict, "flexible-extract": flexible}


def test_gsm8k_correct_ignores_commas_dollars_and_final_period():
    assert gsm8k.correct("$1,000.", "1000")
    assert gsm8k.correct("18.", "18") and not gsm8k.correct("18.0", "18")  # strings, not numbers
    assert not gsm8k.correct(None, "18") and not gsm8k.correct("17", "18")
    item = load_eval_items("gsm8k")[0]
    assert score(item, "9 * 2 = 18\n#### 18") == {"strict-match": ("18", True),
                                                   "flexible-extract": ("18", True)}
    assert score(item, "The answer is 17.") == {"strict-match": (None, False),
                                               "flexible-extract": ("17.", False)}


GENERATIONS = [
    "Janet sells 16 - 3 - 4 = 9 duck eggs a day.\nShe makes 9 * 2 = $18 every day.\n#### 18",
    "So the answer is 18.", "#### 1,234.", "The cost is $1,234.50 in total", "#### -7", "nothing",
    "#### 18\n\nQuestion: next", "3.", "#### $5", "a-b", "12,", "#### 0.5\nthen 0.25 and 4",
    "first 5, then 6.", "It is -.5", "#### .", "1.2.3",
]


def test_gsm8k_agrees_with_lm_eval_filters_and_metric():
    """Our extraction and comparison equal lm-eval's RegexFilter + exact_match item by item, with
    the settings read from the installed lm-eval's own gsm8k.yaml."""
    yaml = pytest.importorskip("yaml")
    extraction = pytest.importorskip("lm_eval.filters.extraction")
    metrics = pytest.importorskip("lm_eval.api.metrics")
    import lm_eval

    task = yaml.safe_load((Path(lm_eval.__file__).parent / "tasks/gsm8k/gsm8k.yaml").read_text())
    (metric,) = task["metric_list"]
    assert tuple(metric["regexes_to_ignore"]) == gsm8k.IGNORE and metric["ignore_case"]
    assert tuple(task["generation_kwargs"]["until"]) == gsm8k.STOP == GEN_TASKS["gsm8k"].stop
    assert task["doc_to_text"] == "Question: {{question}}\nAnswer:" and task["num_fewshot"] == 5
    golds = ["18", "1234", "-7", "5", "0.5"]
    for f in task["filter_list"]:
        name, (regex, take_first) = f["name"], f["filter"]
        assert take_first["function"] == "take_first"
        lm = extraction.RegexFilter(regex["regex_pattern"], regex.get("group_select", 0))
        theirs = [r[0] for r in lm.apply([[g] for g in GENERATIONS], [{}] * len(GENERATIONS))]
        ours = [gsm8k.extract(g)[name] for g in GENERATIONS]
        assert ours == [None if t == lm.fallback else t for t in theirs], name
        for gold in golds:
            lm_correct = [metrics.exact_match_hf_evaluate(
                [t], [f"work\n#### {gold}"], regexes_to_ignore=metric["regexes_to_ignore"],
                ignore_case=True)["exact_match"] == 1.0 for t in theirs]
            assert [gsm8k.correct(o, gold) for o in ours] == lm_correct, (name, gold)


# ---------------------------------------------------------------- MATH


def test_math500_and_math_train_split_the_math_test_set():
    evals, rows = load_eval_items("math500"), load_train_rows("math")
    assert len(evals) == 500 and len(rows) == 4500
    eval_prompts = {it.prompt for it in evals}
    assert not eval_prompts & {r["prompt"] for r in rows}  # no problem trained on and evaluated
    assert len({r["prompt"] for r in rows}) == 4500
    assert all(it.prompt.startswith("Problem:\n") and it.prompt.endswith("\n\nSolution:")
               for it in evals)
    assert all(r["completion"].startswith(" ") and math_answer.last_boxed(r["completion"])
               for r in rows)  # every training solution shows its boxed answer
    first = evals[0]
    assert first.gold == "(3,\\frac{\\pi}{2})"  # from the solution's box, normalized
    assert all(math_answer.normalize(it.gold) == it.gold for it in evals)  # idempotent golds


def test_math500_fewshot_uses_the_minerva_exemplars():
    item = load_eval_items("math500", 1, num_fewshot=4)[0]
    assert item.prompt.count("Problem:\n") == 5 and item.prompt.count("I hope it is correct.") == 4
    assert item.prompt.endswith("\n\nSolution:")
    with pytest.raises(ConfigError, match="num_fewshot"):
        load_eval_items("math500", num_fewshot=5)


@pytest.mark.parametrize("text, boxed", [
    (r"so $\boxed{\frac{1}{2}}$.", r"\frac{1}{2}"),
    (r"\boxed{1} first, then \boxed{\left( 3, \frac{\pi}{2} \right)}", r"\left( 3, \frac{\pi}{2} \right)"),
    (r"\boxed{\begin{pmatrix} 1 \\ {2} \end{pmatrix}}", r"\begin{pmatrix} 1 \\ {2} \end{pmatrix}"),
    (r"\fbox{7}", "7"),
    (r"hence $\boxed 5$.", "5"),
    (r"\boxed{\frac{1}{2}", None),  # unbalanced
    (r"\boxed{}", None),
    ("The answer is 5.", None),
])
def test_last_boxed(text, boxed):
    assert math_answer.last_boxed(text) == boxed
    assert math_answer.extract(text) == {"exact_match": boxed}


@pytest.mark.parametrize("answer, normal", [
    (r"\dfrac{1}{2}", r"\frac{1}{2}"), (r"\tfrac12", r"\frac{1}{2}"), (r"\frac1{2}", r"\frac{1}{2}"),
    (r"\left( 3, \frac{\pi}{2} \right)", r"(3,\frac{\pi}{2})"),
    (r"90^\circ", "90"), (r"90^{\circ}", "90"), (r"50\%", "50"), (r"\$1,000.00", "1000"),
    (r"10\text{ cm}^2", "10"), (r"\text{(C)}", "(C)"), (r"\textbf{east}", "east"),
    ("12 dollars", "12"), ("3 square units", "3"), ("5.0", "5"), (".5", "0.5"), ("x = 3", "3"),
    (r"\sqrt2", r"\sqrt{2}"), (r"\sqrt 2", r"\sqrt{2}"), (r"\frac 1 2", r"\frac{1}{2}"),
    ("4 ft^2", "4"), (r"\frac{\sqrt3}{2}", r"\frac{\sqrt{3}}{2}"), ("3/4", r"\frac{3}{4}"),
    ("(1,2)", "(1,2)"), (r"1{,}000", "1000"),
    (r"1\,000", "1000"), (r"\!-\!5", "-5"), (r"x \rightarrow y", r"x\rightarrowy"), ("7.", "7"),
    ("y = 2x + 1", "2x+1"), ("5x - 7y + 11z + 4 = 0", "5x-7y+11z+4=0"),
])
def test_math_normalize(answer, normal):
    assert math_answer.normalize(answer) == normal


def test_math_correct():
    assert math_answer.correct(r"\dfrac{1}{2}", r"\frac{1}{2}")
    assert math_answer.correct(r"\left( 3, \frac{\pi}{2} \right)", r"(3,\frac{\pi}{2})")
    assert not math_answer.correct(r"\frac{1}{3}", r"\frac{1}{2}")
    assert not math_answer.correct(None, "5")
    item = load_eval_items("math500")[0]
    assert score(item, r"So it is $\boxed{\left(3, \dfrac{\pi}{2}\right)}$.") == {
        "exact_match": (r"\left(3, \dfrac{\pi}{2}\right)", True)}
    assert score(item, "I cannot tell.") == {"exact_match": (None, False)}


def test_math_training_rows_parse_as_sft_prompt_completion():
    items = load_train_sft("gsm8k", n=3, seed=1)  # a gsm8k run trains on the math rows
    assert train_task_for("gsm8k") == train_task_for("math500") == "math"
    rows = load_train_rows("math", n=3, seed=1)
    assert [it.segments for it in items] == [(r["prompt"], r["completion"]) for r in rows]
    assert all(it.format == "prompt-completion" and it.completion == (False, True) for it in items)


# ---------------------------------------------------------------- commonsense

SAMPLE_VALIDATION = {  # the first validation item of each task: its instruction's tail, its gold
    "boolq": ("question: does ethanol take more energy make that produces?\n\n"
              "Answer format: true/false", "false"),
    "piqa": ("and a food dish.\n\nAnswer format: solution1/solution2", "solution1"),
    "socialiqa": ("Answer1: make a new plan Answer2: Go home and see Riley Answer3: Find somewhere "
                  "to go\n\nAnswer format: answer1/answer2/answer3", "answer3"),
    "hellaswag": ("sentence: Roof shingle removal: A man is sitting on a roof. He\n\nEnding1: is "
                  "using wrap to wrap a pair of skis. Ending2:", "ending4"),
    "winogrande": ("_ always got the easier cases.\n\nOption1: Sarah Option2: Maria Answer format: "
                   "option1/option2", "option2"),
    "arc_easy": ("Answer4: airplane\n\nAnswer format: answer1/answer2/answer3/answer4", "answer1"),
    "arc_challenge": ("Answer4: Record the details of the investigation.\n\nAnswer format: "
                      "answer1/answer2/answer3/answer4", "answer4"),
    "openbookqa": ("Answer1: Deep sea animals Answer2: fish", "answer1"),
}
VALIDATION_SIZES = {"boolq": 3270, "piqa": 1838, "socialiqa": 1954, "hellaswag": 10042,
                    "winogrande": 1267, "arc_easy": 570, "arc_challenge": 299, "openbookqa": 500}


@pytest.fixture(scope="module")
def commonsense_items():
    return load_eval_items("commonsense")


@pytest.mark.parametrize("task", commonsense.TASKS)
def test_commonsense_eval_items(task, commonsense_items):
    name = f"commonsense_{task}"
    items = [it for it in commonsense_items if it.task == name]
    assert len(items) == VALIDATION_SIZES[task] and name in GEN_TASKS
    tail, gold = SAMPLE_VALIDATION[task]
    first = items[0]
    head = ALPACA_PROMPT.format(context="", instruction="", input="").split("### Instruction:\n")[0]
    assert first.prompt.startswith(head + "### Instruction:\nPlease ")  # the Alpaca template
    assert first.prompt.endswith("\n\n### Response:\n") and tail in first.prompt
    assert first.gold == gold and first.reference == f"the correct answer is {gold}"
    labels = commonsense.LABELS[task]
    assert {it.gold for it in items} <= set(labels)
    assert all(f"Answer format: {'/'.join(labels[:2])}" in it.prompt for it in items)


@pytest.mark.parametrize("task, generation, extracted", [
    ("boolq", "the correct answer is true", "true"),
    ("boolq", "false, not true", "false"),                      # the first label word counts
    ("boolq", "The correct answer is True", None),              # case-sensitive, as the reference
    ("piqa", "the correct answer is solution2", "solution2"),
    ("socialiqa", "answer3 it is", "answer3"),
    ("arc_easy", "the correct answer is answer5", "answer5"),   # any of the task's label words
    ("hellaswag", "I pick ending2 over ending1", "ending2"),
    ("winogrande", "option1", "option1"),
    ("winogrande", "the correct answer is answer1", None),     # another task's label word
    ("openbookqa", "", None),
])
def test_commonsense_extraction(task, generation, extracted):
    spec = GEN_TASKS[f"commonsense_{task}"]
    assert spec.metrics == ("acc",) and spec.extract(generation) == {"acc": extracted}
    gold = extracted or commonsense.LABELS[task][0]
    assert spec.correct(extracted, gold) is (extracted is not None)


def test_commonsense_sampling_is_per_task_and_seeded():
    items = load_eval_items("commonsense", n=5, seed=3)
    assert [it.task for it in items] == [f"commonsense_{t}" for t in commonsense.TASKS for _ in range(5)]
    assert items == load_eval_items("commonsense", n=5, seed=3)
    assert items != load_eval_items("commonsense", n=5, seed=4)
    assert load_eval_items("commonsense_piqa", n=2, seed=3) == items[5:7]


@pytest.mark.parametrize("task", commonsense.TASKS)
def test_commonsense_train_pairs(task):
    pairs = commonsense.pairs(task, "train")
    labels = commonsense.LABELS[task]
    assert {gold for _, gold in pairs} >= set(labels[:2]) and {g for _, g in pairs} <= set(labels)
    assert all("\nAnswer:" not in ins and "Answer format: " in ins for ins, _ in pairs)
    row = commonsense.row(*pairs[0])
    assert row["output"] == f"the correct answer is {pairs[0][1]}"


@pytest.mark.slow
def test_commonsense_train_rows_are_the_170k_mix():
    rows = load_train_rows("commonsense")
    assert len(rows) == 147580  # the eight bundled train splits, all of them
    sample = load_train_sft("commonsense", n=50, seed=0)
    assert len(sample) == 50 and all(it.format == "alpaca" for it in sample)
    assert all(it.segments[1].startswith("the correct answer is ") for it in sample)
    assert len({it.segments[0].split("### Instruction:\n")[1][:30] for it in sample}) > 3


# ---------------------------------------------------------------- names and arguments


def test_bad_names_and_sizes_raise_config_errors():
    with pytest.raises(ConfigError, match="Did you mean 'gsm8k'"):
        load_eval_items("gsm8kk")
    with pytest.raises(ConfigError, match="not a bundled generative task"):
        load_train_rows("mmlu")
    with pytest.raises(ConfigError, match="positive integer"):
        load_eval_items("math500", n=0)
    assert len(load_eval_items("math500", n=7, seed=2)) == 7
    assert minerva_math.TASK.stop == ("Problem:",) and GEN_TASKS["math500"] is minerva_math.TASK
