"""The items one recipe trains, calibrates, searches and scores on: read once, then shared.

train    the train split (or `data.train_file`) less the held-out items, at most
         `finetune.train_items`: what fine-tuning and calibration see;
holdout  `data.holdout_items` seeded train items (at most a tenth of the split) kept out of
         training to score sub-adapters in `select` searches; validation questions never go here;
eval     the validation split (or `data.eval_file`), `eval.items` of it: the final numbers.

Multiple-choice items are scored by log-likelihood: a `data.train_file` of SFT rows (`sft.py`) is
all train (no holdout: `select` searches need an MC train file), and the final numbers come from
the task's validation split or `data.eval_file`. A generative `data.task` (`gen_tasks`: gsm8k,
math500, commonsense) evaluates `GenItem`s by generation and trains on its bundled SFT rows
(`gen_tasks.train_task_for`) unless `data.train_file` is given; nothing is held out.
"""

from __future__ import annotations

import functools
import logging
import random
from typing import TYPE_CHECKING

import torch

from . import data, gen_tasks, sft
from .errors import ConfigError

if TYPE_CHECKING:
    from .recipe import Recipe

log = logging.getLogger(__name__)


class RunData:
    """Lazily read splits of one recipe (`Recipe.splits` holds one per recipe)."""

    def __init__(self, recipe: Recipe):
        self.recipe = recipe

    @functools.cached_property
    def generative(self) -> bool:
        """Scored by generation: `data.task` is a bundled generative task and no `data.eval_file`
        (of MC rows) replaces its items."""
        return is_generative(self.recipe.data.task) and not self.recipe.data.eval_file

    @functools.cached_property
    def _raw_eval(self) -> list[data.MCItem]:
        d = self.recipe.data
        if d.eval_file:
            return data.load_jsonl(d.eval_file)
        return [] if self.generative else data.load_val_items(d.task)

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
    def eval(self) -> list[data.MCItem] | list[gen_tasks.GenItem]:
        """The scored items: `eval.items` of the validation split (for `commonsense`, of each of
        its tasks)."""
        e = self.recipe.eval
        if self.generative:
            return gen_tasks.load_eval_items(self.recipe.data.task, e.items, e.seed,
                                             num_fewshot=e.num_fewshot)
        return data.subsample(self.all_eval, e.items, e.seed)

    @functools.cached_property
    def _train_and_holdout(self) -> tuple[list, list[data.MCItem]]:
        d, train_cfg = self.recipe.data, self.recipe.finetune.train
        if d.train_file:
            items = sft.load_train_file(d.train_file)
        elif self.generative:
            items = gen_tasks.load_train_sft(d.task, train_cfg.train_items, train_cfg.seed)
        else:
            items = data.load_train_items(d.task)
        fmt = sft.item_format(items)
        if fmt != "mc":  # SFT rows: trained on as they are rendered, nothing held out to score
            if d.holdout_items and not self.generative:
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


def is_generative(task: str) -> bool:
    """A bundled task scored by generation (`gen_tasks.EVAL_TASKS`), not by log-likelihood."""
    return task in gen_tasks.EVAL_TASKS


def check_task(task: str) -> None:
    """`task` is a bundled multiple-choice (`data.TASKS`) or generative task.

    Raises:
        ConfigError: neither, with the closest name.
    """
    if is_generative(task):
        return
    if task not in data.TASKS:
        import difflib

        known = sorted(data.TASKS) + list(gen_tasks.EVAL_TASKS)
        close = difflib.get_close_matches(task, known, n=1)
        raise ConfigError(f"`data.task`={task!r} is not a bundled task; use a multiple-choice task "
                          f"{sorted(data.TASKS)} or a generative one {list(gen_tasks.EVAL_TASKS)}"
                          + (f". Did you mean {close[0]!r}?" if close else "."))
