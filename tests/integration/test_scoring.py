"""The shared-prefix (packed) scorer gives the reference scorer's numbers."""

import torch

import sqft_intel as sq
from sqft_intel.data import MCItem
from sqft_intel.evaluation.scoring import choice_logprobs, packed_choice_logprobs

LOGPROB_TOL = 1e-4  # fp32 sums of a few log-probs; only summation order differs


def items():
    return [
        MCItem("Question: which is the sun?\nAnswer:", ("the star", "water", "a rock of metal"), 0),
        MCItem("Question: what is cold?\nAnswer:", ("fire", "the moon is cold"), 1),
        MCItem("", ("the sun is a star", "the sun is water"), 0),  # empty query: EOS context
    ]


def test_packed_equals_reference(tiny_model_dir):
    model, tok = sq.load_model(str(tiny_model_dir))
    ref = choice_logprobs(model, tok, items(), progress=False)
    fast = packed_choice_logprobs(model, tok, items(), batch_size=2, progress=False)
    for a, b in zip(ref, fast, strict=True):
        torch.testing.assert_close(torch.tensor(b), torch.tensor(a), atol=LOGPROB_TOL, rtol=0)


def test_score_mc_counts_hits(tiny_model_dir):
    model, tok = sq.load_model(str(tiny_model_dir))
    s1 = sq.score_mc(model, tok, items(), packed=True, progress=False)
    s2 = sq.score_mc(model, tok, items(), packed=False, progress=False)
    assert s1 == s2 and s1.n == 3 and 0 <= s1.acc <= 1


def test_packed_scoring_needs_sdpa(tiny_model_dir):
    import pytest

    model, tok = sq.load_model(str(tiny_model_dir))
    model.config._attn_implementation = "eager"
    with pytest.raises(sq.UnsupportedModelError, match="SDPA"):
        packed_choice_logprobs(model, tok, items(), progress=False)
    assert sq.score_mc(model, tok, items(), progress=False).n == 3  # falls back to the reference
