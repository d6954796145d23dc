"""`data.prompt_format`: chat-rendered items score and train the assistant's reply, and the answer
ends with the token generation stops at."""

import pytest

from sqft_intel import ConfigError, MCItem
from sqft_intel.data import render_chat
from sqft_intel.evaluation.scoring import encode_packed, encode_request
from sqft_intel.finetune.loop import build_examples, end_token_id

ITEM = MCItem("Question: which is warmer?\nAnswer:", ("the sun", "the moon"), 0)


def test_chat_rendering_puts_the_answer_in_the_assistant_turn(tiny_tokenizer):
    (item,) = render_chat([ITEM], tiny_tokenizer)
    assert item.query == f"user: {ITEM.query}\nassistant:" and item.delimiter == ""
    assert item.choices == ITEM.choices and item.gold == ITEM.gold
    ids, n = encode_request(tiny_tokenizer, item.query, item.answer, item.delimiter)
    assert tiny_tokenizer.decode(ids[-n:]) == "the sun"  # no space: the reply follows the header
    ids_packed, seg, _ = encode_packed(tiny_tokenizer, item)
    assert tiny_tokenizer.decode(ids_packed[: seg.count(0)]) == item.query


def test_chat_needs_a_chat_template(tiny_tokenizer):
    import copy

    bare = copy.deepcopy(tiny_tokenizer)
    bare.chat_template = None
    with pytest.raises(ConfigError, match="chat template.*prompt_format 'plain'"):
        render_chat([ITEM], bare, source="my-model")


def test_answers_end_with_the_generation_configs_end_token(tiny_tokenizer, tiny_llama):
    eos = tiny_tokenizer.eos_token_id
    assert end_token_id(tiny_llama, tiny_tokenizer) == eos
    tiny_llama.generation_config.eos_token_id = [7, eos]  # generation stops at 7 first
    assert end_token_id(tiny_llama, tiny_tokenizer) == 7
    (ids, loss), = build_examples(tiny_tokenizer, [ITEM], 128, end_token_id(tiny_llama, tiny_tokenizer))
    n = sum(loss)
    assert ids[-1] == 7 and tiny_tokenizer.decode(ids[-n:-1]) == " the sun" and all(loss[-n:])
    tiny_llama.generation_config.eos_token_id = None
    assert end_token_id(tiny_llama, tiny_tokenizer) == eos


def test_prompt_format_is_validated():
    from sqft_intel.recipe import DataConfig, EvalConfig

    with pytest.raises(ConfigError, match="prompt_format"):
        DataConfig(prompt_format="alpaca")
    with pytest.raises(ConfigError, match="prompt_format"):
        EvalConfig(prompt_format="mixed")


def test_auto_trains_an_instruct_model_on_both_formats_and_scores_plain(tiny_recipe):
    """`auto` with a chat template: half the training items as chat, half plain (seeded, the same
    split as plain); validation and held-out items keep the task's prompts."""
    from sqft_intel.recipe import build_recipe, load_recipe_file

    raw = load_recipe_file(tiny_recipe)
    auto = build_recipe(raw, {"data": {"prompt_format": "auto"}})
    plain = build_recipe(raw, {"data": {"prompt_format": "plain"}})
    assert auto.splits.prompt_format == "mixed" and plain.splits.prompt_format == "plain"
    chat = [a for a in auto.splits.train if a.delimiter == ""]
    assert 0.3 < len(chat) / len(auto.splits.train) < 0.7
    for a, p in zip(auto.splits.train, plain.splits.train, strict=True):
        assert (a.choices, a.gold) == (p.choices, p.gold)
        assert a.query == p.query or a.query == f"user: {p.query}\nassistant:"
    assert auto.splits.eval == plain.splits.eval and auto.splits.holdout == plain.splits.holdout
