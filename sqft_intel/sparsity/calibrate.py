"""Calibration plumbing for Wanda: capture decoder-block inputs, accumulate ‖X_j‖² per layer."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

_DROP_KWARGS = ("past_key_values", "past_key_value", "use_cache")


class _StopForward(Exception):
    """Raised by the capture hook to stop the forward once block 0's inputs are recorded."""


def block_output(out: Any) -> Tensor:
    """Decoder blocks return a Tensor (transformers >= 4.56) or a tuple whose first item it is."""
    return out[0] if isinstance(out, (tuple, list)) else out


@torch.no_grad()
def capture_block_inputs(
    model: nn.Module, first_block: nn.Module, batches: list[Tensor]
) -> list[tuple[Tensor, dict[str, Any]]]:
    """Run the embeddings for each `(B, T)` batch and record what block 0 receives.

    Returns one `(hidden (B, T, d), kwargs)` per batch: kwargs hold attention mask, positions and
    rotary embeddings, reused verbatim for every later block.
    """
    records: list[tuple[Tensor, dict[str, Any]]] = []

    def hook(module, args, kwargs):
        kwargs = dict(kwargs)
        hidden = args[0] if args else kwargs.pop("hidden_states")
        kept = {k: v for k, v in kwargs.items() if k not in _DROP_KWARGS}
        records.append((hidden.detach(), kept))
        raise _StopForward

    handle = first_block.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for ids in batches:
            try:
                model(input_ids=ids, use_cache=False)
            except _StopForward:
                pass
    finally:
        handle.remove()
    return records


class InputNorms:
    """Forward hooks summing x_j² over all tokens seen by each layer: (in,) fp32 per layer."""

    def __init__(self, layers: dict[str, nn.Linear]):
        self.sums = {n: torch.zeros(m.in_features, dtype=torch.float32) for n, m in layers.items()}
        self._handles = [m.register_forward_hook(self._hook(n)) for n, m in layers.items()]

    def _hook(self, name: str):
        def hook(module, args, output):
            x = args[0].detach().float().reshape(-1, args[0].shape[-1])  # (tokens, in)
            self.sums[name] += x.pow(2).sum(0).to(self.sums[name].device)

        return hook

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
