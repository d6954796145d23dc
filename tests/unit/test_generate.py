"""Generation backends (torch, OpenVINO GenAI) and generative scoring.

The torch checks run on the tiny random Llama in fp32: batched decoding gives the one-by-one
texts, stop strings and end tokens cut where they should. The OpenVINO check runs the same
prompts on the tiny INT4 chain's export (`tiny_int4_run`) and its torch reference.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

import pytest
import torch

from sqft_intel.errors import ConfigError
from sqft_intel.evaluation.generate import (
    GenerationStats,
    cut_at_stop,
    end_token_ids,
    generate_torch,
)
from sqft_intel.evaluation.generative import read_records, score_generative, write_records
from tests.conftest import WORDS

# prompts of different lengths (2 to 21 words), so a batch needs left padding
PROMPTS = [f"Question: {' '.join(WORDS[i:i + 2 + (5 * i) % 19])}?\nAnswer:" for i in range(10)]


def greedy_no_cache(model, tok, prompt: str, n: int) -> list[int]:
    """Reference: full forward per token, argmax, no KV cache, no padding."""
    ids = tok(prompt, add_special_tokens=False)["input_ids"]
    out = []
    with torch.no_grad():
        for _ in range(n):
            nxt = int(model(input_ids=torch.tensor([ids + out])).logits[0, -1].argmax())
            out.append(nxt)
    return out


def test_cut_at_stop_cuts_before_the_earliest_stop_string():
    assert cut_at_stop("a b\n\nQuestion: c", ("Question:", "\n\n")) == "a b"
    assert cut_at_stop("a b", ("Question:",)) == "a b"
    assert cut_at_stop("a b", ("", "b")) == "a "  # an empty stop string never matches


def test_end_tokens_are_the_tokenizers_and_the_generation_configs(tiny_llama, tiny_tokenizer):
    assert end_token_ids(tiny_llama, tiny_tokenizer) == (0,)
    tiny_llama.generation_config.eos_token_id = [7, 0, 3]
    assert end_token_ids(tiny_llama, tiny_tokenizer) == (0, 3, 7)


def test_kv_cache_greedy_equals_full_forward_greedy(tiny_llama, tiny_tokenizer):
    tiny_llama.generation_config.eos_token_id = None  # only the tokenizer's <eos> ends a text
    for p in PROMPTS[:3]:
        want = greedy_no_cache(tiny_llama, tiny_tokenizer, p, 12)
        if 0 in want:
            want = want[:want.index(0)]
        got = generate_torch(tiny_llama, tiny_tokenizer, [p], max_new_tokens=12, progress=False)
        assert got == [tiny_tokenizer.decode(want, skip_special_tokens=True)]


def test_batched_equals_one_by_one_with_stop_strings(tiny_llama, tiny_tokenizer):
    kw = {"max_new_tokens": 20, "progress": False}
    free = generate_torch(tiny_llama, tiny_tokenizer, PROMPTS, batch_size=1, **kw)
    # a stop string found in some texts and not in others: in a batch, some sequences end early
    stop = next(w for w in WORDS if 0 < sum(f" {w}" in t for t in free) < len(free))
    one = generate_torch(tiny_llama, tiny_tokenizer, PROMPTS, batch_size=1, stop=(f" {stop}",), **kw)
    batched = generate_torch(tiny_llama, tiny_tokenizer, PROMPTS, batch_size=4,
                             stop=(f" {stop}",), **kw)
    assert batched == one == [cut_at_stop(t, (f" {stop}",)) for t in free]
    assert any(b != f for b, f in zip(batched, free, strict=True))  # the stop string did cut
    assert len(set(free)) > 1  # the prompts lead to different texts: order is checked


def test_results_come_back_in_input_order(tiny_llama, tiny_tokenizer):
    kw = {"max_new_tokens": 8, "batch_size": 3, "progress": False}
    fwd = generate_torch(tiny_llama, tiny_tokenizer, PROMPTS, **kw)
    rev = generate_torch(tiny_llama, tiny_tokenizer, PROMPTS[::-1], **kw)
    assert rev == fwd[::-1]


def test_stop_string_ends_generation_and_is_cut_exactly(tiny_llama, tiny_tokenizer):
    p = PROMPTS[4]
    full_stats, stop_stats = GenerationStats(), GenerationStats()
    tiny_llama.generation_config.eos_token_id = None
    full = generate_torch(tiny_llama, tiny_tokenizer, [p], max_new_tokens=24, progress=False,
                          stats=full_stats)[0]
    # a stop string starting mid-text, three characters long: may start or end inside a token
    mid = len(full) // 3
    stop = full[mid:mid + 3]
    got = generate_torch(tiny_llama, tiny_tokenizer, [p], max_new_tokens=24, stop=(stop,),
                         progress=False, stats=stop_stats)[0]
    assert got == full[:full.index(stop)]
    assert stop_stats.new_tokens < full_stats.new_tokens  # generation stopped, not just the text cut


def test_generation_config_end_token_stops_a_sequence(tiny_llama, tiny_tokenizer):
    p = PROMPTS[2]
    tiny_llama.generation_config.eos_token_id = None
    gen = greedy_no_cache(tiny_llama, tiny_tokenizer, p, 10)
    k = next(k for k in range(1, 10) if gen[k] not in gen[:k] and gen[k] != 0)
    tiny_llama.generation_config.eos_token_id = [gen[k]]  # the model now "ends" at step k
    stats = GenerationStats()
    got = generate_torch(tiny_llama, tiny_tokenizer, [p], max_new_tokens=10, progress=False,
                         stats=stats)
    assert got == [tiny_tokenizer.decode(gen[:k], skip_special_tokens=True)]
    assert stats.items == 1 and stats.new_tokens == k + 1  # the end token counts, nothing after


def test_prompt_too_long_for_the_model_is_refused_before_work(tiny_llama, tiny_tokenizer):
    long = " ".join(WORDS * 20)  # ~800 tokens; the tiny model has 256 positions
    with pytest.raises(ConfigError, match=r"prompt 1 has \d+ tokens.*max_new_tokens"):
        generate_torch(tiny_llama, tiny_tokenizer, ["a", long], max_new_tokens=4, progress=False)
    with pytest.raises(ConfigError, match="prompt 1 is empty"):
        generate_torch(tiny_llama, tiny_tokenizer, ["a", ""], max_new_tokens=4, progress=False)
    with pytest.raises(ConfigError, match="max_new_tokens"):
        generate_torch(tiny_llama, tiny_tokenizer, ["a"], max_new_tokens=0, progress=False)


@dataclass(frozen=True)
class Item:  # the fields of gen_tasks.GenItem that scoring reads
    id: str
    task: str
    prompt: str
    gold: str
    reference: str = ""


class HashTask:
    """A GSM8K-like task: strict = the number after '#### ', flexible = the last number."""

    name = "toy"
    stop = ("Question:",)
    max_new_tokens = 16
    metrics = ("strict", "flexible")

    def extract(self, generation: str) -> dict[str, str | None]:
        strict = re.search(r"#### (-?\d+)", generation)
        numbers = re.findall(r"-?\d+", generation)
        return {"strict": strict and strict.group(1), "flexible": numbers[-1] if numbers else None}

    def correct(self, extracted: str | None, gold: str) -> bool:
        return extracted == gold


def test_score_generative_counts_each_metric_and_keeps_a_record_per_item():
    items = [Item("a", "toy", "Q1", "4"), Item("b", "toy", "Q2", "7"), Item("c", "toy", "Q3", "9")]
    gens = ["2+2 #### 4", "it is 5 or 7", "no idea"]
    summary, records = score_generative(HashTask(), items, gens)
    assert summary == {"task": "toy", "n": 3,
                       "accuracy": {"strict": 1 / 3, "flexible": 2 / 3},
                       "no_answer": {"strict": 2, "flexible": 1}}
    assert records[1] == {"id": "b", "task": "toy", "prompt": "Q2", "generation": "it is 5 or 7",
                          "extracted": {"strict": None, "flexible": "7"}, "gold": "7",
                          "correct": {"strict": False, "flexible": True}}
    assert [r["id"] for r in records] == ["a", "b", "c"]
    with pytest.raises(ValueError, match="3 items but 2 generations"):
        score_generative(HashTask(), items, gens[:2])


def test_records_are_written_as_jsonl_atomically(tmp_path):
    _, records = score_generative(HashTask(), [Item("a", "toy", "Q: é?", "4")], ["#### 4 ✓"])
    path = write_records(tmp_path / "eval" / "gen.jsonl", records)  # its folder is made
    assert read_records(path) == records
    assert [json.loads(line) for line in path.read_text().splitlines()] == records
    assert sorted(p.name for p in path.parent.iterdir()) == ["gen.jsonl"]  # no temporary left
    write_records(path, records + records)  # replaced whole
    assert len(read_records(path)) == 2
