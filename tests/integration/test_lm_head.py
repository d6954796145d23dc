"""`answer_loss` (the LM head applied to labelled positions only) equals HF's own
`model(input_ids, attention_mask=..., labels=...).loss` on right-padded batches.

Both sides get the same unshifted `labels` (the token ids themselves inside the answer, -100
elsewhere), as the training collate builds them: HF shifts them internally (position t predicts
token t+1) and `answer_loss` must shift the same way.
"""

import torch

from sqft_intel.finetune.loop import Example, collate
from sqft_intel.lm_head import answer_loss
from tests.conftest import make_tiny_llama

# fp32 on both sides, same decoder run: the two differ only in float summation order (the head on
# n rows instead of B*T, one mean over n), ~1e-7 on a loss of ~log(vocab) = 5.8. An off-by-one
# position or a wrong token set moves the loss by far more than 1e-5.
TOL = 1e-5


def _hf_loss(model, batch) -> torch.Tensor:
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                 labels=batch["labels"]).loss


def _ours(model, batch) -> torch.Tensor:
    return answer_loss(model, batch["input_ids"], batch["attention_mask"], batch["labels"])


@torch.no_grad()
def test_answer_loss_equals_hf_loss_on_the_training_collate(tiny_tokenizer):
    model = make_tiny_llama(len(tiny_tokenizer)).float()
    pairs = [("Question: which is warmer?\nAnswer:", " the sun"),
             ("Question: what is the moon made of, rock or metal or water?\nAnswer:", " rock"),
             ("Question: fire?\nAnswer:", " heat and light from a star")]
    examples = []
    for query, answer in pairs:
        ids = tiny_tokenizer(query + answer)["input_ids"]
        n = len(tiny_tokenizer(answer)["input_ids"])
        examples.append(Example(ids, [False] * (len(ids) - n) + [True] * n))
    batch = collate(examples, pad_id=tiny_tokenizer.pad_token_id)
    lengths = batch["attention_mask"].sum(1)
    assert len(set(lengths.tolist())) == 3 and (batch["attention_mask"] == 0).any()  # right padding
    assert (batch["labels"][batch["attention_mask"] == 0] == -100).all()

    ours, hf = _ours(model, batch), _hf_loss(model, batch)
    assert ours.dtype == hf.dtype == torch.float32 and torch.isfinite(hf)
    torch.testing.assert_close(ours, hf, atol=TOL, rtol=0)


@torch.no_grad()
def test_answer_loss_equals_hf_loss_with_several_spans_per_row(tiny_tokenizer):
    """Two or three labelled spans per row, one starting at position 0 (a label there has no
    predicting position: both sides drop it) and one ending at the last real token."""
    model = make_tiny_llama(len(tiny_tokenizer)).float()
    g = torch.Generator().manual_seed(0)
    lengths = [20, 14, 9]
    ids = torch.full((3, 20), tiny_tokenizer.pad_token_id, dtype=torch.long)
    attn = torch.zeros_like(ids)
    for b, n in enumerate(lengths):
        ids[b, :n] = torch.randint(1, len(tiny_tokenizer), (n,), generator=g)
        attn[b, :n] = 1
    labels = torch.full_like(ids, -100)
    spans = {0: [(0, 3), (8, 11), (17, 20)], 1: [(2, 4), (9, 14)], 2: [(1, 2), (5, 9)]}
    for b, row_spans in spans.items():
        for s, e in row_spans:
            labels[b, s:e] = ids[b, s:e]
    batch = {"input_ids": ids, "attention_mask": attn, "labels": labels}

    ours, hf = _ours(model, batch), _hf_loss(model, batch)
    torch.testing.assert_close(ours, hf, atol=TOL, rtol=0)
    # the spans matter: one span fewer per row is a different loss (the comparison has teeth)
    fewer = labels.clone()
    fewer[0, 8:11] = -100
    assert abs(float(_ours(model, {**batch, "labels": fewer})) - float(hf)) > 100 * TOL
