"""Stage `finetune` on a `messages` file (SFT rows): over-long rows stop the run at the check,
before any weight loads, or are cut and counted in stage.json; a select search needs MC rows."""

import math

import pytest
import torch
from safetensors.torch import load_file

import sqft_intel as sq
from sqft_intel.finetune.loop import encode_item
from sqft_intel.run_dir import RunDir
from tests.conftest import WORDS, write_jsonl, write_tiny_recipe
from tests.stages.conftest import recipe_of, run_stages


def _chats(n: int) -> list[dict]:
    g = torch.Generator().manual_seed(3)
    say = lambda k: " ".join(WORDS[int(i)] for i in torch.randint(len(WORDS), (k,), generator=g))  # noqa: E731
    rows = []
    for i in range(n):
        turns = [{"role": "system", "content": say(3)}] if i % 2 else []
        for _ in range(1 + i % 3):  # 1 to 3 exchanges: rows of different lengths
            turns += [{"role": "user", "content": say(4)}, {"role": "assistant", "content": say(3)}]
        rows.append({"messages": turns})
    return rows


@pytest.fixture(scope="module")
def chat_recipe(tmp_path_factory, tiny_model_dir, tiny_task):
    d = tmp_path_factory.mktemp("sft-chat")
    train = write_jsonl(d / "chat.jsonl", _chats(32))
    return write_tiny_recipe(d, tiny_model_dir, train, tiny_task[1])


def _lengths(recipe: sq.Recipe) -> list[int]:
    tok = recipe.splits.tokenizer
    return [len(encode_item(tok, it, tok.eos_token_id).ids) for it in recipe.splits.train]


def test_overlong_rows_stop_the_run_before_weights_load(chat_recipe):
    recipe = recipe_of(chat_recipe)
    lengths = _lengths(recipe)
    limit = sorted(lengths)[len(lengths) // 2]
    over = sum(n > limit for n in lengths)
    short = recipe_of(chat_recipe, {"finetune": {"max_length": limit}})
    with pytest.raises(sq.ConfigError, match=rf"{over} of 32 training rows are longer than "
                                             rf"`finetune.max_length`={limit}.*has {max(lengths)}"):
        sq.validate(short, ("finetune",))
    sq.validate(recipe_of(chat_recipe, {"finetune": {"max_length": max(lengths)}}), ("finetune",))
    # nothing of an SFT file is held out: a select search says why
    search = recipe_of(chat_recipe, {"select": {"strategy": "hill-climb"}})
    assert search.splits.holdout == [] and search.splits.train_format == "messages"
    with pytest.raises(sq.ConfigError, match="holds `messages` rows .*, of which none is held out"):
        sq.validate(search, ("select",))


def test_finetune_on_messages_records_the_format_and_the_cut_rows(tmp_path, chat_recipe):
    lengths = _lengths(recipe_of(chat_recipe))
    limit = sorted(lengths)[-4]
    recipe = recipe_of(chat_recipe, {"finetune": {"max_length": limit, "overlong": "truncate"}})
    sq.validate(recipe, ("sparsify", "finetune"))
    out = run_stages(recipe, tmp_path / "run", "sparsify", "finetune")  # calibrated on the chats
    rec = sq.load_stage(RunDir(out).finetune, expect="finetune")
    assert rec.metrics["train_format"] == "messages"
    assert rec.metrics["truncated_rows"] == sum(n > limit for n in lengths) >= 1
    assert rec.config["train"]["overlong"] == "truncate" and math.isfinite(rec.metrics["final_loss"])
    adapters = load_file(RunDir(out).finetune / "adapters.safetensors")
    assert any(k.endswith("lora_B") and v.abs().sum() > 0 for k, v in adapters.items())  # trained
