"""Calibration plumbing for Wanda: capture decoder-block inputs, accumulate ‖X_j‖² per layer."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..targets import decoder_blocks

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


class InputStats:
    """Forward hooks summing `reduce(x)` over every calibration batch, x = (tokens, in) fp32."""

    def __init__(self, layers: dict[str, nn.Module], reduce: Callable[[Tensor], Tensor]):
        self.sums: dict[str, Tensor] = {}
        self._reduce = reduce
        self._handles = [m.register_forward_hook(self._hook(n)) for n, m in layers.items()]

    def _hook(self, name: str):
        def hook(module, args, output):
            x = args[0].detach().float().reshape(-1, args[0].shape[-1])
            stat = self._reduce(x)
            self.sums[name] = stat if name not in self.sums else self.sums[name] + stat

        return hook

    def remove(self) -> None:
        for h in self._handles:
            h.remove()


def input_norms(layers: dict[str, nn.Module]) -> InputStats:
    """‖X_j‖² per input feature: (in,) per layer (Wanda)."""
    return InputStats(layers, lambda x: x.pow(2).sum(0))


def input_hessians(layers: dict[str, nn.Module]) -> InputStats:
    """H = XᵀX: (in, in) per layer (GPTQ)."""
    return InputStats(layers, lambda x: x.T @ x)


@torch.no_grad()
def blockwise(
    model: nn.Module, targets: dict[str, nn.Module], calib: Tensor, *,
    stats: Callable[[dict[str, nn.Module]], InputStats], batch_size: int = 8, desc: str = "",
    progress: bool = True,
) -> Iterator[tuple[dict[str, nn.Module], InputStats]]:
    """Sequential calibration shared by Wanda and GPTQ.

    For each decoder block in order: run the calibration activations through it with `stats`
    hooks on its targeted layers, yield `(layers, stats)` so the caller can rewrite those layers
    in place, then run the block again so the next block sees the *rewritten* block's outputs.
    `calib`: (N, T) token ids.
    """
    prefix, blocks = decoder_blocks(model)
    was_training = model.training
    model.eval()
    try:
        records = capture_block_inputs(model, blocks[0], list(calib.split(batch_size)))
        for i, block in enumerate(tqdm(blocks, desc=desc, unit="block", disable=not progress)):
            layers = {f: m for f, m in targets.items() if f.startswith(f"{prefix}.{i}.")}
            hooks = stats(layers)
            try:
                for hidden, kwargs in records:
                    block(hidden, **kwargs)
            finally:
                hooks.remove()
            yield layers, hooks
            records = [(block_output(block(hidden, **kwargs)), kwargs) for hidden, kwargs in records]
    finally:
        model.train(was_training)
