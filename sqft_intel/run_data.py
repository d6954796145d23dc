"""The items one recipe trains, calibrates, searches and scores on: read once, then shared.

train    the train split (or `data.train_file`) less the held-out items, at most
         `finetune.train_items`: what fine-tuning and calibration see;
holdout  `data.holdout_items` seeded train items (at most a tenth of the split) kept out of
         training to score sub-adapters in `select` searches; validation questions never go here;
eval     the validation split (or `data.eval_file`), `eval.items` of it: the final numbers.

Only multiple-choice items are scored: a `data.train_file` of SFT rows (`sft.py`) is all train
(no holdout: `select` searches need an MC train file), and the final numbers come from the
task's validation split or `data.eval_file`.
"""

from __future__ import annotations

import functools
import logging
import random
from typing import TYPE_CHECKING

import torch

from . import data, sft
from .errors import ConfigError

if TYPE_CHECKING:
    from .recipe import Recipe

log = logging.getLogger(__name__)


class RunData:
    """Lazily read splits of one recipe (`Recipe.splits` holds one per recipe)."""

    def __init__(self, recipe: Recipe):
        self.recipe = recipe

    @functools.cached_property
    def _raw_eval(self) -> list[data.MCItem]:
        d = self.recipe.data
        return data.load_jsonl(d.eval_file) if d.eval_file else data.load_val_items(d.task)

    @functools.cached_property
    def all_eval(self) -> list[data.MCItem]:
        return self._render(self._raw_eval, self.recipe.eval.prompt_format)

    @functools.cached_property
    def prompt_format(self) -> str:
        """`data.prompt_format` resolved: `auto` is `mixed` for a tokenizer with a chat template
        (an instruct model), else `plain`."""
        fmt = self.recipe.data.prompt_format
        if fmt == "auto":
            fmt = "mixed" if getattr(self.tokenizer, "chat_template", None) else "plain"
        return fmt

    def _render(self, items: list[data.MCItem], fmt: str, seed: int = 0) -> list[data.MCItem]:
        """`items` in prompt format `fmt`; `mixed`: a seeded half of them as chat."""
        if fmt == "plain" or not items:
            return items
        chat = data.render_chat(items, self.tokenizer, source=self.recipe.model.name_or_path)
        if fmt == "chat":
            return chat
        coin = random.Random(seed)
        return [c if coin.random() < 0.5 else p for p, c in zip(items, chat, strict=True)]

    @functools.cached_property
    def tokenizer(self):
        """The recipe model's tokenizer (as `from_pretrained` gives it)."""
        from transformers import AutoTokenizer

        from .models import resolve_model

        m = self.recipe.model
        return AutoTokenizer.from_pretrained(resolve_model(m.name_or_path),
                                             trust_remote_code=m.trust_remote_code)

    @functools.cached_property
    def eval(self) -> list[data.MCItem]:
        e = self.recipe.eval
        return data.subsample(self.all_eval, e.items, e.seed)

    @functools.cached_property
    def _train_and_holdout(self) -> tuple[list, list[data.MCItem]]:
        d, train_cfg = self.recipe.data, self.recipe.finetune.train
        items = sft.load_train_file(d.train_file) if d.train_file else data.load_train_items(d.task)
        fmt = sft.item_format(items)
        if fmt != "mc":  # SFT rows: trained on as they are rendered, nothing held out to score
            if d.holdout_items:
                log.info("`data.train_file` holds `%s` rows, not multiple choice: none is held "
                         "out (`data.holdout_items` applies to MC rows only)", fmt)
            train = data.subsample(items, train_cfg.train_items, train_cfg.seed)
            if fmt == "messages":
                train = sft.render_messages(train, self.tokenizer,
                                            source=self.recipe.model.name_or_path)
            return train, []
        n = min(d.holdout_items, len(items) // 10)  # never more than a tenth of the data
        train, holdout = data.split_holdout(items, n, avoid=self._raw_eval if n else ())
        train = data.subsample(train, train_cfg.train_items, train_cfg.seed)
        # trained as `data.prompt_format` says; held-out items are scored like the validation split
        return (self._render(train, self.prompt_format, train_cfg.seed),
                self._render(holdout, self.recipe.eval.prompt_format))

    @property
    def train(self) -> list[data.MCItem] | list[sft.SFTItem]:
        return self._train_and_holdout[0]

    @property
    def train_format(self) -> str:
        """`mc`, or the SFT format of `data.train_file` (`messages`, `prompt-completion`, ...)."""
        return sft.item_format(self.train)

    @property
    def holdout(self) -> list[data.MCItem]:
        return self._train_and_holdout[1]

    def calibration_ids(self, tokenizer, cfg) -> torch.Tensor:
        """(calib_samples, calib_seq_len) ids: the train text, shuffled with `cfg.seed`,
        concatenated with the end token between items and cut in pieces.

        `cfg` is the stage's config (sparsify or quantize): calib_samples, calib_seq_len, seed.
        """
        texts = data.calibration_texts(self.train)
        random.Random(cfg.seed).shuffle(texts)
        need = cfg.calib_samples * cfg.calib_seq_len
        ids: list[int] = []
        for t in texts:
            ids += tokenizer(t, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
            if len(ids) >= need:
                break
        if len(ids) < need:
            raise ConfigError(
                f"the training text has {len(ids)} tokens, calibration needs calib_samples*"
                f"calib_seq_len={need}; lower `calib_samples` or `calib_seq_len`.")
        return torch.tensor(ids[:need]).reshape(cfg.calib_samples, cfg.calib_seq_len)
