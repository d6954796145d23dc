"""SFT training files (`data.train_file`): messages / prompt-completion / text / Alpaca rows, which
tokens carry the loss, the end token, bad rows named by file and line, over-long rows, and MC rows
encoded exactly as before the SFT formats came."""

import copy
import json
import re

import pytest

from sqft_intel import ConfigError, MCItem, load_jsonl
from sqft_intel.data import calibration_texts, render_chat
from sqft_intel.evaluation.scoring import encode_request
from sqft_intel.finetune.loop import build_examples, collate, encode_item, fit_examples
from sqft_intel.sft import ALPACA_PROMPT, SFTItem, load_train_file, render_messages, row_format
from tests.conftest import write_jsonl

EOS = 0  # the tiny tokenizer's <eos>: the end token the tiny Llama's generation stops at

CHAT = {"messages": [{"role": "system", "content": "the sun"},
                     {"role": "user", "content": "what is the moon"},
                     {"role": "assistant", "content": "a rock"},
                     {"role": "user", "content": "and fire"},
                     {"role": "assistant", "content": "heat and light"}]}
ROWS = {
    "messages": CHAT,
    "prompt-completion": {"prompt": "Question: what is the sun?\nAnswer:", "completion": " a star"},
    "text": {"text": "the sun is a star of fire and light"},
    "alpaca": {"instruction": "what is the moon", "input": "", "output": "a rock"},
    "mc": {"query": "Question: which is warmer?\nAnswer:", "choices": ["the sun", "water"], "gold": 0},
}


def _load(tmp_path, row: dict, tok, n: int = 1) -> list:
    items = load_train_file(write_jsonl(tmp_path / "train.jsonl", [row] * n))
    return render_messages(items, tok)


def _trained(tok, item, **kw) -> tuple[str, str]:
    """(text of the loss tokens, text of the others), the end token written as <eos>."""
    ids, loss = encode_item(tok, item, EOS, **kw)
    return (tok.decode([i for i, m in zip(ids, loss, strict=True) if m]),
            tok.decode([i for i, m in zip(ids, loss, strict=True) if not m]))


@pytest.mark.parametrize("fmt", list(ROWS))
def test_format_is_told_by_the_keys(tmp_path, tiny_tokenizer, fmt):
    assert row_format(ROWS[fmt]) == fmt
    (item,) = _load(tmp_path, ROWS[fmt], tiny_tokenizer)
    assert isinstance(item, MCItem) if fmt == "mc" else item.format == fmt
    # Alpaca files often carry a rendered `text` too: still Alpaca
    assert row_format({**ROWS["alpaca"], "text": "x"}) == "alpaca"


def test_prompt_completion_trains_on_the_completion_and_its_end(tmp_path, tiny_tokenizer):
    (item,) = _load(tmp_path, ROWS["prompt-completion"], tiny_tokenizer)
    loss, rest = _trained(tiny_tokenizer, item)
    assert loss == " a star<eos>" and rest == "Question: what is the sun?\nAnswer:"


def test_alpaca_uses_the_llm_adapters_prompt(tmp_path, tiny_tokenizer):
    (plain,) = _load(tmp_path, ROWS["alpaca"], tiny_tokenizer)  # empty `input`: no Input section
    assert plain.segments[0] == (
        "Below is an instruction that describes a task. Write a response that appropriately "
        "completes the request.\n\n### Instruction:\nwhat is the moon\n\n### Response:\n")
    (ctx,) = _load(tmp_path, {**ROWS["alpaca"], "input": "at night"}, tiny_tokenizer)
    assert ctx.segments[0] == (
        "Below is an instruction that describes a task, paired with an input that provides further "
        "context. Write a response that appropriately completes the request.\n\n### Instruction:\n"
        "what is the moon\n\n### Input:\nat night\n\n### Response:\n")
    assert "{" not in ALPACA_PROMPT.format(context="", instruction="i", input="")
    loss, rest = _trained(tiny_tokenizer, ctx)
    assert loss == "a rock<eos>" and rest == ctx.segments[0]


def test_text_trains_on_every_token(tmp_path, tiny_tokenizer):
    (item,) = _load(tmp_path, ROWS["text"], tiny_tokenizer)
    ids, loss = encode_item(tiny_tokenizer, item, EOS)
    assert all(loss) and ids[-1] == EOS
    assert tiny_tokenizer.decode(ids) == ROWS["text"]["text"] + "<eos>"


def test_messages_train_on_every_assistant_turn_only(tmp_path, tiny_tokenizer):
    (item,) = _load(tmp_path, CHAT, tiny_tokenizer)
    ids, loss = encode_item(tiny_tokenizer, item, EOS)
    # the tiny template writes no end-of-turn token: the end token follows each assistant turn
    assert tiny_tokenizer.decode(ids) == ("system: the sun\nuser: what is the moon\nassistant: a rock"
                                          "\n<eos>user: and fire\nassistant: heat and light\n<eos>")
    spans, cur = [], []
    for i, m in zip(ids, loss, strict=True):
        if m:
            cur.append(i)
        elif cur:
            spans, cur = spans + [cur], []
    spans += [cur] if cur else []
    assert [tiny_tokenizer.decode(s) for s in spans] == [" a rock\n<eos>", " heat and light\n<eos>"]
    # the conversation is the chat template's text (plus the end tokens)
    rendered = tiny_tokenizer.apply_chat_template(CHAT["messages"], tokenize=False)
    assert item.text == rendered and calibration_texts([item]) == [rendered]


def test_messages_keep_a_template_end_of_turn_that_is_the_end_token(tmp_path, tiny_tokenizer):
    tok = copy.deepcopy(tiny_tokenizer)
    tok.chat_template = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}<eos>\n"
                         "{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}")
    (item,) = _load(tmp_path, CHAT, tok)
    ids, loss = encode_item(tok, item, EOS)
    assert tok.decode(ids) == tok.apply_chat_template(CHAT["messages"], tokenize=False)  # none added
    trained = tok.decode([i for i, m in zip(ids, loss, strict=True) if m])
    assert trained == " a rock<eos>\n heat and light<eos>\n"
    # another end token (generation stops elsewhere) is added after the template's end-of-turn
    ids7, loss7 = encode_item(tok, item, 7)
    assert ids7.count(7) == 2 and len(ids7) == len(ids) + 2 and sum(loss7) == sum(loss) + 2


@pytest.mark.parametrize("fmt", ["messages", "prompt-completion", "alpaca", "mc"])
def test_train_on_prompt_unmasks_the_prompt(tmp_path, tiny_tokenizer, fmt):
    (item,) = _load(tmp_path, ROWS[fmt], tiny_tokenizer)
    ids, loss = encode_item(tiny_tokenizer, item, EOS, train_on_prompt=True)
    assert all(loss)
    assert encode_item(tiny_tokenizer, item, EOS).ids == ids  # same tokens, more targets
    assert not all(encode_item(tiny_tokenizer, item, EOS).loss)


def test_collate_labels_follow_the_loss_mask(tmp_path, tiny_tokenizer):
    items = _load(tmp_path, CHAT, tiny_tokenizer) + _load(tmp_path, ROWS["text"], tiny_tokenizer)
    examples = build_examples(tiny_tokenizer, items, 512, EOS)
    batch = collate(examples, pad_id=EOS)
    for b, (ids, loss) in enumerate(examples):
        labels = batch["labels"][b, : len(ids)].tolist()
        assert labels == [i if m else -100 for i, m in zip(ids, loss, strict=True)]
        assert (batch["labels"][b, len(ids):] == -100).all()


def test_chat_messages_need_a_chat_template(tmp_path, tiny_tokenizer):
    bare = copy.deepcopy(tiny_tokenizer)
    bare.chat_template = None
    items = load_train_file(write_jsonl(tmp_path / "chat.jsonl", [CHAT]))
    with pytest.raises(ConfigError, match="chat template; my-model's has none.*prompt`/`completion"):
        render_messages(items, bare, source="my-model")


def test_json_array_names_the_line_a_row_starts_on(tmp_path, tiny_tokenizer):
    good = ROWS["prompt-completion"]
    path = tmp_path / "train.json"
    path.write_text(json.dumps([good, good], indent=2))
    items = load_train_file(path)
    assert [it.where for it in items] == [f"`{path}` line 2", f"`{path}` line 6"]
    assert items[0].segments == (good["prompt"], good["completion"])
    path.write_text("[\n" + json.dumps(good) + ",\n\n  " + json.dumps({"prompt": "q", "completion": 3})
                    + "\n]")
    with pytest.raises(ConfigError, match=re.escape(f"`{path}` line 4") + ".*`completion` must be a str"):
        load_train_file(path)
    path.write_text(json.dumps({"rows": [good]}))
    with pytest.raises(ConfigError, match="not an array of rows"):
        load_train_file(path)
    # MC rows read from a .json array as from JSONL
    mc = tmp_path / "mc.json"
    mc.write_text(json.dumps([ROWS["mc"]]))
    assert load_jsonl(mc) == load_train_file(mc) == [MCItem(ROWS["mc"]["query"], ("the sun", "water"), 0)]


def _msgs(*turns) -> dict:
    return {"messages": [{"role": r, "content": c} for r, c in turns]}


@pytest.mark.parametrize("first, row, words", [
    ("prompt-completion", {"foo": 1}, r"fits no training format \(got keys \['foo'\]\)"),
    ("prompt-completion", 5, r"must be a JSON object; got 5"),
    ("prompt-completion", {"prompt": "q"}, r"`prompt-completion` row .* lacks `completion`"),
    ("prompt-completion", {"completion": "a"}, r"lacks `prompt`"),
    ("prompt-completion", {"prompt": "q", "completion": 3}, r"`completion` must be a string, got 3"),
    ("prompt-completion", {"prompt": None, "completion": "a"}, r"`prompt` must be a string, got null"),
    ("prompt-completion", {"prompt": "q", "completion": "  "}, r"`completion` is empty"),
    ("prompt-completion", ROWS["text"], r"a `text` row in a file of `prompt-completion` rows \(as "
                                        r"`.*` line 1\)"),
    ("mc", ROWS["prompt-completion"], r"a `prompt-completion` row in a file of `mc` rows"),
    ("prompt-completion", ROWS["mc"], r"a `mc` row in a file of `prompt-completion` rows"),
    ("text", {"text": ""}, r"`text` is empty"),
    ("text", {"text": ["a"]}, r"`text` must be a string"),
    ("alpaca", {"instruction": "do"}, r"`alpaca` row .* lacks `output`"),
    ("alpaca", {"instruction": "do", "output": ""}, r"`output` is empty"),
    ("alpaca", {"instruction": "do", "input": 3, "output": "x"}, r"`input` must be a string"),
    ("messages", {"messages": "hi"}, r"`messages` must be a non-empty list"),
    ("messages", {"messages": []}, r"`messages` must be a non-empty list"),
    ("messages", {"messages": [{"role": "user"}]}, r"`messages\[0\]` must be an object with `role`"),
    ("messages", _msgs(("user", "q"), ("bot", "a")), r"`messages\[1\].role`=\"bot\"; use one of"),
    ("messages", _msgs(("user", "q"), ("assistant", 3)), r"`messages\[1\].content` must be a string"),
    ("messages", _msgs(("user", "q"), ("assistant", " ")), r"`messages\[1\]` is an empty assistant"),
    ("messages", _msgs(("system", "s"), ("user", "q")), r"has no assistant turn"),
    ("messages", _msgs(("assistant", "a"), ("user", "q")), r"starts with an assistant turn"),
])
def test_bad_row_names_file_and_line(tmp_path, first, row, words):
    # the bad row is line 3, after a good row and a blank line
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps(ROWS[first]) + "\n\n" + json.dumps(row) + "\n")
    with pytest.raises(ConfigError, match=re.escape(f"`{path}` line 3") + ": .*" + words):
        load_train_file(path)


def test_overlong_rows_are_refused_with_the_count_and_the_longest(tmp_path, tiny_tokenizer):
    rows = [{"prompt": "Question: what is the sun?\nAnswer:", "completion": " a star " * k}
            for k in (1, 6, 2, 9, 1)]
    path = write_jsonl(tmp_path / "long.jsonl", rows)
    items = load_train_file(path)
    examples = [encode_item(tiny_tokenizer, it, EOS) for it in items]
    lengths = [len(ex.ids) for ex in examples]
    limit = sorted(lengths)[2]  # two rows (lines 2 and 4) are longer
    with pytest.raises(ConfigError, match=(
            rf"2 of 5 training rows are longer than `finetune.max_length`={limit} tokens; the "
            rf"longest, {re.escape(f'`{path}` line 4')}, has {lengths[3]}\. "
            rf"Raise `finetune.max_length` \(to {lengths[3]}.*`finetune.overlong: truncate`")):
        fit_examples(examples, items, limit, "refuse")
    cut, n = fit_examples(examples, items, limit, "truncate")
    assert n == 2 and max(len(ex.ids) for ex in cut) == limit
    for ex, full in zip(cut, examples, strict=True):
        assert ex.ids == full.ids[-limit:]  # from the left: the completion's end is kept
        assert ex.ids[-1] == EOS and ex.loss[-1]


def test_mc_rows_fit_as_before_whatever_overlong_says(tiny_tokenizer):
    items = [MCItem("Question: " + "the sun " * 40 + "?\nAnswer:", ("a star", "water"), 0)]
    assert fit_examples([encode_item(tiny_tokenizer, items[0], EOS)], items, 16, "refuse")[1] == 1


def _build_examples_before_sft(tokenizer, items, max_length, end_id=None):
    """`finetune.loop.build_examples` as it was before SFT rows came, verbatim: (ids, n_answer)."""
    examples = []
    for it in items:
        ids, n_answer = encode_request(tokenizer, it.query, it.answer, it.delimiter)
        if end_id is not None:
            ids, n_answer = ids + [end_id], n_answer + 1  # learn to stop
        if len(ids) > max_length:
            ids = ids[-max_length:]
            n_answer = min(n_answer, max_length - 1)
        examples.append((ids, n_answer))
    return examples


@pytest.mark.parametrize("max_length", [128, 12, 3])
def test_mc_items_give_the_same_ids_and_loss_positions_as_before(tiny_tokenizer, tiny_task,
                                                                  max_length):
    plain = load_train_file(tiny_task[0])
    items = plain + render_chat(plain[:8], tiny_tokenizer) + [MCItem("", ("the sun", "a star"), 1)]
    for end_id in (EOS, None):
        old = _build_examples_before_sft(tiny_tokenizer, items, max_length, end_id)
        new = build_examples(tiny_tokenizer, items, max_length, end_id, overlong="refuse")
        assert [ids for ids, _ in new] == [ids for ids, _ in old]
        assert [loss for _, loss in new] == [[False] * (len(ids) - n) + [True] * n for ids, n in old]
        old_labels = collate([(ids, [k >= len(ids) - n for k in range(len(ids))]) for ids, n in old],
                             EOS)["labels"]
        assert collate(new, EOS)["labels"].equal(old_labels)


def test_sft_items_are_rendered_once(tmp_path, tiny_tokenizer):
    items = load_train_file(write_jsonl(tmp_path / "chat.jsonl", [CHAT]))
    assert items[0].segments == () and items[0].messages
    with pytest.raises(ValueError, match="render"):
        _ = items[0].text
    rendered = render_messages(items, tiny_tokenizer)
    assert render_messages(rendered, tiny_tokenizer) == rendered
    # the loop renders unrendered rows itself, to the same tokens
    assert encode_item(tiny_tokenizer, items[0], EOS) == encode_item(tiny_tokenizer, rendered[0], EOS)
    assert isinstance(rendered[0], SFTItem)
