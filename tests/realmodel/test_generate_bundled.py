"""Batched greedy generation on the bundled SmolLM2-135M (fp32): the texts one-by-one decoding
gives, on few-shot "Question/Answer" prompts of different lengths (left padding up to ~40 tokens)."""

import pytest

from sqft_intel.evaluation.generate import GenerationStats, generate_torch

pytestmark = [pytest.mark.realmodel, pytest.mark.slow]

SHOTS = ("Question: Tom has 3 apples and buys 2 more. How many apples does he have?\n"
         "Answer: He has 3 + 2 = 5 apples. #### 5\n\n"
         "Question: A box holds 4 rows of 6 eggs. How many eggs are in the box?\n"
         "Answer: 4 * 6 = 24 eggs. #### 24\n\n")
QUESTIONS = (
    "Sam reads 10 pages a day. How many pages does he read in 3 days?",
    "A shop sold 12 cakes in the morning and 7 in the afternoon. How many cakes did it sell?",
    "Lena had 20 dollars and spent 8. How much money is left?",
    "There are 5 cars with 4 wheels each, and one bicycle with 2 wheels. How many wheels are "
    "there in all, counting every car and the bicycle together?",
    "What is 9 times 7?",
    "A train travels 60 miles each hour for 4 hours, stops, then travels 30 more miles. How far "
    "did it travel in total, from the station where it started to the one where it ended?",
)


def test_bundled_batched_equals_one_by_one():
    import sqft_intel as sq

    model, tok = sq.load_model("smollm2-135m")
    prompts = [f"{SHOTS}Question: {q}\nAnswer:" for q in QUESTIONS]
    kw = {"max_new_tokens": 24, "stop": ("Question:", "\n\n"), "progress": False}
    one_stats, batch_stats = GenerationStats(), GenerationStats()
    one = generate_torch(model, tok, prompts, batch_size=1, stats=one_stats, **kw)
    batched = generate_torch(model, tok, prompts, batch_size=6, stats=batch_stats, **kw)
    assert batched == one
    assert all(t.strip() for t in one)  # the model answers something after "Answer:"
    assert batch_stats.new_tokens == one_stats.new_tokens
    print(f"one by one {one_stats.tokens_per_s:.1f} tok/s, batch of 6 "
          f"{batch_stats.tokens_per_s:.1f} tok/s ({one_stats.new_tokens} tokens)")
