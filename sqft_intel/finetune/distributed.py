"""Data-parallel fine-tuning on torch.distributed: DDP over gloo (CPU) or xccl (Intel GPUs).

Launched by `torchrun` or `accelerate launch` (they set WORLD_SIZE/RANK/MASTER_ADDR). Every
rank holds the whole model and a shard of each global batch; DDP averages the adapter gradients.
NLS draws the same ranks on every rank (same seed) and rank 0's draw is broadcast anyway.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ..lm_head import answer_loss


def launched() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init(device: torch.device) -> None:
    """Join the process group the launcher describes (gloo on CPU, xccl on XPU)."""
    if launched() and not dist.is_initialized():
        dist.init_process_group("xccl" if device.type == "xpu" else "gloo")


def world() -> tuple[int, int]:
    """(rank, world size); (0, 1) without a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    return world()[0] == 0


def barrier() -> None:
    if world()[1] > 1:
        dist.barrier()


class AnswerLoss(nn.Module):
    """The model's answer-token loss as a module, so DDP's forward (and its gradient hooks) see it.

    With `global_count`, returns sum(local token losses) / global_count * world: after DDP's
    gradient average this is the gradient of the mean over the whole global batch, exactly what
    one process computes on that batch.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: Tensor, attention_mask: Tensor, labels: Tensor,
                scale: Tensor | None = None) -> Tensor:
        loss = answer_loss(self.model, input_ids, attention_mask, labels)
        return loss if scale is None else loss * scale


def wrap(model: nn.Module) -> nn.Module:
    """AnswerLoss(model), inside DDP when launched on several ranks."""
    loss = AnswerLoss(model)
    if world()[1] == 1:
        return loss
    return nn.parallel.DistributedDataParallel(loss, broadcast_buffers=False)


def shard(idx: list[int]) -> list[int]:
    rank, size = world()
    return idx[rank::size]


def token_scale(labels: Tensor) -> Tensor | None:
    """world × local answer tokens / global answer tokens (None on one rank)."""
    rank, size = world()
    if size == 1:
        return None
    local = (labels[:, 1:] != -100).sum().to(torch.float64)
    total = local.clone()
    dist.all_reduce(total)
    return (local * size / total).to(torch.float32)


def reduce_sum(x: float) -> float:
    if world()[1] == 1:
        return x
    t = torch.tensor([x], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t)


def same_on_all_ranks(obj):
    """Rank 0's `obj` everywhere (the NLS rank draw: identical by seed, broadcast to be sure)."""
    if world()[1] == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
