"""A generative `data.task` in a recipe: what it trains on, what it scores, what is refused before
any weight loads, and the table `sqft eval` prints for it."""

import pytest

import sqft_intel as sq
from sqft_intel.gen_tasks import GenItem
from sqft_intel.run_data import check_task, is_generative
from sqft_intel.sft import SFTItem
from sqft_intel.stages import evaluate, evaluate_gen
from sqft_intel.stages.check import CheckContext


def recipe(**sections) -> sq.Recipe:
    return sq.build_recipe(sections)


@pytest.mark.parametrize("task", ["gsm8k", "math500", "commonsense", "commonsense_boolq"])
def test_generative_tasks_are_bundled_tasks(task):
    check_task(task)
    assert is_generative(task) and not is_generative("arc_easy")


def test_an_unknown_task_names_both_kinds_and_the_closest():
    with pytest.raises(sq.ConfigError, match=r"generative one .*'gsm8k'.*Did you mean 'gsm8k'"):
        check_task("gsm8")
    with pytest.raises(sq.ConfigError, match="multiple-choice task"):
        check_task("no_such_task")


def test_gsm8k_trains_on_math_rows_and_scores_gsm8k_items():
    r = recipe(data={"task": "gsm8k"}, eval={"items": 5, "num_fewshot": 2},
               finetune={"train_items": 7})
    assert r.splits.generative
    items = r.splits.eval
    assert len(items) == 5 and all(isinstance(it, GenItem) and it.task == "gsm8k" for it in items)
    assert all(it.prompt.count("Question:") == 3 and it.prompt.endswith("Answer:") for it in items)
    train = r.splits.train
    assert len(train) == 7 and all(isinstance(it, SFTItem) for it in train)
    assert all(it.segments[0].startswith("Problem:\n") for it in train)  # MATH, as trained
    assert r.splits.holdout == [] and r.splits.train_format == "prompt-completion"


def test_commonsense_scores_each_task_and_trains_on_alpaca_rows():
    r = recipe(data={"task": "commonsense"}, eval={"items": 2}, finetune={"train_items": 5})
    tasks = [it.task for it in r.splits.eval]
    assert len(tasks) == 16 and len(set(tasks)) == 8  # two items of each of the eight tasks
    assert len(r.splits.train) == 5 and r.splits.train_format == "alpaca"


def test_a_train_file_replaces_the_bundled_rows(tmp_path):
    f = tmp_path / "rows.jsonl"
    f.write_text('{"prompt": "Question: 1+1?\\nAnswer:", "completion": " 2 #### 2"}\n')
    r = recipe(data={"task": "gsm8k", "train_file": str(f)}, eval={"items": 3})
    assert [it.segments for it in r.splits.train] == [("Question: 1+1?\nAnswer:", " 2 #### 2")]
    assert len(r.splits.eval) == 3 and r.splits.generative


@pytest.mark.parametrize("section, match", [
    ({"harness": "lm-eval"}, "scored by generation"),
    ({"prompt_format": "chat"}, "a generative task's prompts are its own"),
])
def test_eval_settings_for_multiple_choice_are_refused(section, match):
    r = recipe(data={"task": "gsm8k"}, eval={"items": 2, **section})
    with pytest.raises(sq.ConfigError, match=match):
        evaluate.check(r, CheckContext(skeleton=None, running=frozenset()))


@pytest.mark.parametrize("key, value", [("max_new_tokens", 0), ("num_fewshot", -1),
                                        ("max_new_tokens", "64"), ("num_fewshot", True)])
def test_generation_settings_are_validated(key, value):
    with pytest.raises(sq.ConfigError, match=f"`eval.{key}`"):
        recipe(eval={key: value})


def test_a_search_is_refused_with_the_reason():
    from sqft_intel.stages import select

    r = recipe(data={"task": "gsm8k"}, select={"strategy": "hill-climb"},
               finetune={"train_items": 3})
    with pytest.raises(sq.ConfigError, match="none is held out"):
        select.check(r, CheckContext(skeleton=None, running=frozenset({"select"})))


def test_the_generative_table_shows_every_task_and_the_mean():
    scores = {"commonsense_boolq": {"acc": 0.5}, "commonsense_piqa": {"acc": 0.25}}
    summary = {"task": "commonsense", "eval_items": 4,
               "metrics": {t: ["acc"] for t in scores},
               "rows": [{"variant": "dense", "sparsity": 0.0, "scores": scores, "acc": 0.375},
                        {"variant": "openvino export", "sparsity": 0.5, "scores": scores,
                         "acc": 0.375}],
               "merge": {"method": "sparsepeft", "total_new_nonzeros": 0}}
    table = evaluate_gen.format_table(summary)
    lines = table.strip().splitlines()
    assert "boolq" in lines[1] and "piqa" in lines[1] and "mean" in lines[1]
    assert lines[2].split()[-3:] == ["50.0%", "25.0%", "37.5%"]
    assert lines[3].startswith("openvino export") and "50.0%" in lines[3]
