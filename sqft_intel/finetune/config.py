"""Configuration of the training loop (the adapter shape lives in `NLSConfig`)."""

from __future__ import annotations

import typing
from dataclasses import dataclass
from typing import Literal

from ..device import Precision
from ..errors import ConfigError


@dataclass(frozen=True)
class TrainConfig:
    """How the NLS adapters are trained.

    Args:
        steps: optimizer steps; one sub-adapter (rank per group) is sampled per step.
        batch_size: examples per micro-batch.
        grad_accum: micro-batches per optimizer step (all with the same sampled ranks).
        lr: peak AdamW learning rate (linear warm-up, then linear decay to 10 %). None: the
            adapter mode's default (`NLSConfig.default_lr`: 3e-4, or 2e-3 for qa-sparsepeft).
        warmup_steps: steps of linear warm-up.
        weight_decay: AdamW weight decay on the adapters.
        max_length: tokens per example. MC items longer than this lose the start of their
            prompt; SFT rows follow `overlong`.
        overlong: SFT rows (`data.train_file` of messages / prompt-completion / text / Alpaca
            rows) longer than `max_length`: `refuse` (default) stops before training, naming the
            count and the longest row; `truncate` cuts them from the left (the prompt's start,
            then earlier turns; the completion is kept as far as it fits) and the finetune
            stage records how many (`truncated_rows`).
        train_on_prompt: put the loss on the prompt tokens too (MC queries, SFT prompts, system
            and user turns); default: on the completions only.
        precision: `auto` = bf16 autocast on AMX CPUs and Intel GPUs, fp32 otherwise.
        device: `auto`, `cpu` or `xpu[:N]`.
        seed: adapter init, data order, dropout and rank sampling.
        checkpoint_every: save a resumable checkpoint every N steps (0 = never).
        gradient_checkpointing: recompute decoder blocks in backward to save memory.
        train_items: use at most this many training items (None = all).
        log_every: steps between loss records in the log.
        scales_lr: peak learning rate of learned INT4 scales (`finetune.learn_scales`); None: a
            tenth of the adapters' (NNCF's advice for its trainable quantizer ranges).
    """

    steps: int = 150
    batch_size: int = 16
    grad_accum: int = 1
    lr: float | None = None
    warmup_steps: int = 10
    weight_decay: float = 0.0
    max_length: int = 128
    precision: Precision = "auto"
    device: str = "auto"
    seed: int = 42
    checkpoint_every: int = 50
    gradient_checkpointing: bool = False
    train_items: int | None = None
    log_every: int = 1
    scales_lr: float | None = None
    overlong: Literal["refuse", "truncate"] = "refuse"
    train_on_prompt: bool = False

    def __post_init__(self):
        for name in ("steps", "batch_size", "grad_accum", "max_length", "log_every"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"`finetune.{name}` must be a positive int, got {v!r}.")
        for name in ("warmup_steps", "checkpoint_every"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ConfigError(f"`finetune.{name}` must be an int >= 0, got {v!r}.")
        if self.lr is not None and (isinstance(self.lr, bool) or not isinstance(self.lr, (int, float))
                                    or not 0 < self.lr < 1):
            raise ConfigError(f"`finetune.lr`={self.lr!r} must be null or in (0, 1); try 3e-4.")
        if self.scales_lr is not None and (isinstance(self.scales_lr, bool) or not isinstance(
                self.scales_lr, (int, float)) or not 0 < self.scales_lr < 1):
            raise ConfigError(f"`finetune.scales_lr`={self.scales_lr!r} must be null or in (0, 1).")
        if self.overlong not in ("refuse", "truncate"):
            raise ConfigError(f"`finetune.overlong`={self.overlong!r}; use 'refuse' or 'truncate'.")
        if not isinstance(self.train_on_prompt, bool):
            raise ConfigError(f"`finetune.train_on_prompt`={self.train_on_prompt!r} must be true or "
                              "false.")
        if self.precision not in typing.get_args(Precision):
            raise ConfigError(f"`finetune.precision`={self.precision!r}; use auto, bf16 or fp32.")
        if self.train_items is not None and (not isinstance(self.train_items, int)
                                             or self.train_items < 1):
            raise ConfigError(f"`finetune.train_items`={self.train_items!r} must be null or >= 1.")
