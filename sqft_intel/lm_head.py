"""Log-probabilities at chosen positions only: run the decoder, project just the rows we score.

With a 49k vocabulary the LM head and its softmax cost as much as a fifth of the model per token;
training and scoring need them only at answer tokens (a few of ~60 per example).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def decoder_and_head(model: nn.Module) -> tuple[nn.Module, nn.Module]:
    """(backbone returning hidden states, output projection) of a HF causal LM."""
    return getattr(model, model.base_model_prefix), model.get_output_embeddings()


def selected_logits(model: nn.Module, input_ids: Tensor, attention_mask: Tensor, select: Tensor
                    ) -> Tensor:
    """Logits predicting token t+1 at the positions t where `select` (B, T) is True: (n, vocab)."""
    backbone, head = decoder_and_head(model)
    hidden = backbone(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)[0]
    return head(hidden[select])


def answer_loss(model: nn.Module, input_ids: Tensor, attention_mask: Tensor, labels: Tensor
                ) -> Tensor:
    """Mean next-token cross-entropy over labelled tokens; equals HF's `model(labels=...).loss`."""
    targets = labels[:, 1:]  # (B, T-1): position t predicts token t+1
    select = torch.zeros_like(labels, dtype=torch.bool)
    select[:, :-1] = targets != -100
    logits = selected_logits(model, input_ids, attention_mask, select)  # (n, vocab)
    return F.cross_entropy(logits.float(), targets[targets != -100])
