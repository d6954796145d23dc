"""The recipe: one YAML file, one section per stage, merged over the defaults and validated once.

`sqft run --recipe FILE` merges FILE over `DEFAULT_RECIPE`, so a file holding only
`sparsify: {sparsity: 0.6}` is a complete recipe. Unknown keys fail with the closest valid key.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import functools
import re
import types
import typing
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

import yaml

from .adapters.config import NLSConfig
from .device import Precision
from .errors import ConfigError
from .export.config import ExportConfig
from .finetune.config import TrainConfig
from .merge.config import MergeConfig
from .quantization.config import Int4Config
from .sparsity.config import SparsityConfig


@dataclass(frozen=True)
class ModelConfig:
    """Args:
    name_or_path: a local save_pretrained folder, a hub id, or `smollm2-135m` (bundled).
    trust_remote_code: run a hub model's own Python code; off unless you trust it.
    """

    name_or_path: str = "smollm2-135m"
    trust_remote_code: bool = False

    def __post_init__(self):
        if not isinstance(self.name_or_path, str) or not self.name_or_path:
            raise ConfigError(f"`model.name_or_path` must be a non-empty string, got {self.name_or_path!r}.")


@dataclass(frozen=True)
class DataConfig:
    """Args:
    task: bundled task (train split for fine-tuning/calibration, validation split for accuracy).
    train_file: a JSONL file (or a `.json` array) of rows replacing the task's train split, all
        of one format, told by their keys: multiple choice `{"query", "choices", "gold"}`, or
        SFT rows (`sft.py`): chat `{"messages": [{"role", "content"}, ...]}` (rendered with the
        tokenizer's chat template, trained on the assistant turns), `{"prompt", "completion"}`
        (trained on the completion), `{"text"}` (every token), or Alpaca `{"instruction",
        "input" (optional), "output"}` (LLM-Adapters' prompt, trained on the output). SFT rows
        are only trained on and calibrated with: nothing is held out of them, and scores come
        from the validation split or `eval_file`.
    eval_file: JSONL of the same rows replacing the task's validation split.
    holdout_items: items held out of the train split (seeded, at most a tenth of it, never
        trained on) to score sub-adapters in `select` searches; the final numbers always come from
        the validation split, whose questions are never held out.
    prompt_format: how training items are rendered: `plain` (the query text, then " " + the
        answer), `chat` (the query as one user turn through the tokenizer's chat template, the
        answer as the assistant's reply), `mixed` (a seeded half of the items each way), or
        `auto` (default): `mixed` when the tokenizer has a chat template (an instruct model,
        whose export GenAI, optimum and the server's chat route ask through that template, and
        whose completion route gets plain text), else `plain`. Every answer ends with the end
        token the export stops at. How items are scored is `eval.prompt_format`. MC items
        only: SFT rows carry their own rendering.
    """

    task: str = "arc_easy"
    train_file: str | None = None
    eval_file: str | None = None
    holdout_items: int = 200
    prompt_format: Literal["auto", "plain", "chat", "mixed"] = "auto"

    def __post_init__(self):
        if self.prompt_format not in ("auto", "plain", "chat", "mixed"):
            raise ConfigError(f"`data.prompt_format`={self.prompt_format!r}; use 'auto', 'plain', "
                              "'chat' or 'mixed'.")
        if isinstance(self.holdout_items, bool) or not isinstance(self.holdout_items, int) \
                or self.holdout_items < 0:
            raise ConfigError(f"`data.holdout_items`={self.holdout_items!r} must be an int >= 0.")


@dataclass(frozen=True)
class SelectConfig:
    """Args:
    strategy: `heuristic` (median rank of each space, SQFT's default), `maximal`, `minimal`,
        `custom` (then `ranks` is one int for all elastic groups or a dict group -> rank), or a
        search from the heuristic configuration scored on `data.holdout_items` held-out train
        items: `hill-climb` or `evolution`. `candidates` (NNCF's NLS example) scores only a few
        configurations on those items and keeps the best: the heuristic, the one sampled most
        often in training, and the configurations of the 5 logged training steps with the lowest
        loss (one batch each: a noisy ranking), each once; without ranks in the finetune log
        (an older run) only the first two.
    budget: searches: configurations evaluated, the heuristic start included; `candidates`:
        at most this many (7 at most in any case).
    metric: searches: `acc` or `acc_norm` on the held-out items (ties: fewer adapter parameters).
    population: `evolution`: configurations kept per generation.
    seed: searches: move order, random configurations and mutations.
    """

    strategy: Literal["heuristic", "maximal", "minimal", "custom", "hill-climb", "evolution",
                      "candidates"] = "heuristic"
    ranks: int | dict[str, int] | None = None
    budget: int = 24
    metric: Literal["acc", "acc_norm"] = "acc"
    population: int = 8
    seed: int = 0

    def __post_init__(self):
        allowed = ("heuristic", "maximal", "minimal", "custom", "hill-climb", "evolution",
                   "candidates")
        if self.strategy not in allowed:
            raise ConfigError(f"`select.strategy`={self.strategy!r}; use one of {list(allowed)}.")
        for name in ("budget", "population"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"`select.{name}`={v!r} must be a positive int.")
        if self.metric not in ("acc", "acc_norm"):
            raise ConfigError(f"`select.metric`={self.metric!r}; use 'acc' or 'acc_norm'.")
        if (self.strategy == "custom") != (self.ranks is not None):
            raise ConfigError(
                "`select.ranks` is required with strategy 'custom' and only then; "
                f"got strategy={self.strategy!r}, ranks={self.ranks!r}."
            )

    @property
    def choice(self):
        return self.ranks if self.strategy == "custom" else self.strategy

    @property
    def is_search(self) -> bool:
        """Scores sub-adapters on held-out items (a search or `candidates`)."""
        return self.strategy in ("hill-climb", "evolution", "candidates")


@dataclass(frozen=True)
class EvalConfig:
    """Args:
    items: evaluate on a seeded random subset of this many validation items (None = all).
    batch_size: scoring requests per forward.
    precision: `fp32` (default: accuracy must not move with bf16 rounding of log-probs), `bf16`
        or `auto` (bf16 autocast where the CPU has fast bf16; benchmarks/ has the figures).
    packed: score all choices of an item in one sequence behind a shared query (same numbers,
        about 2x faster); `false` scores one sequence per choice (the reference).
    seed: which subset.
    harness: `builtin` (our scorer: the accuracy table of `sqft run`) or `lm-eval`
        (lm-evaluation-harness on the merged model, base + unmerged adapters, and the OpenVINO
        export; `sqft eval --harness lm-eval`).
    tasks: lm-eval tasks (empty: `data.task`). Bundled task names run as local task definitions
        over the same items as the built-in scorer; other names come from lm-eval's registry (and
        download their data, so they need a reachable hub).
    prompt_format: how validation and held-out items are scored: `plain` (default: the task's
        own prompts, as lm-eval scores them) or `chat` (each query through the chat template).
        Multiple-choice tasks only.
    max_new_tokens: generative tasks (gsm8k, math500, commonsense): tokens generated per item
        at most (None: the task's own budget, `gen_tasks`).
    num_fewshot: generative tasks: exemplars in each prompt (None: the task's default, gsm8k 5,
        math500 0; commonsense takes none).
    """

    items: int | None = None
    batch_size: int = 8
    precision: Precision = "fp32"
    packed: bool = True
    seed: int = 0
    harness: Literal["builtin", "lm-eval"] = "builtin"
    tasks: tuple[str, ...] = ()
    prompt_format: Literal["plain", "chat"] = "plain"
    max_new_tokens: int | None = None
    num_fewshot: int | None = None

    def __post_init__(self):
        for key, least in (("max_new_tokens", 1), ("num_fewshot", 0)):
            v = getattr(self, key)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < least):
                raise ConfigError(f"`eval.{key}`={v!r} must be null or an int >= {least}.")
        if self.items is not None and (not isinstance(self.items, int) or self.items < 1):
            raise ConfigError(f"`eval.items`={self.items!r} must be null or a positive int.")
        if self.harness not in ("builtin", "lm-eval"):
            raise ConfigError(f"`eval.harness`={self.harness!r}; use 'builtin' or 'lm-eval'.")
        if self.prompt_format not in ("plain", "chat"):
            raise ConfigError(f"`eval.prompt_format`={self.prompt_format!r}; use 'plain' or 'chat'.")
        object.__setattr__(self, "tasks", tuple(self.tasks))


# section -> the config classes whose fields it holds (finetune = adapter shape + training loop)
SECTIONS: dict[str, tuple[type, ...]] = {
    "model": (ModelConfig,),
    "data": (DataConfig,),
    "sparsify": (SparsityConfig,),
    "quantize": (Int4Config,),
    "finetune": (NLSConfig, TrainConfig),
    "select": (SelectConfig,),
    "merge": (MergeConfig,),
    "eval": (EvalConfig,),
    "export": (ExportConfig,),
}


def _defaults() -> dict[str, dict[str, Any]]:
    out = {}
    for section, classes in SECTIONS.items():
        merged: dict[str, Any] = {}
        for cls in classes:
            merged.update(_jsonable(dataclasses.asdict(cls())))
        out[section] = merged
    return out


def _jsonable(v):
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    return v


DEFAULT_RECIPE: dict[str, dict[str, Any]] = _defaults()

# `--quick`: the same pipeline on a schedule that finishes in about 3 minutes on 2 cores.
QUICK_OVERRIDES: dict[str, dict[str, Any]] = {
    "sparsify": {"calib_samples": 16},
    "quantize": {"calib_samples": 16},
    "finetune": {"steps": 30, "warmup_steps": 3, "checkpoint_every": 10},
    "eval": {"items": 150},
}


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads `3e-4` (no dot) as a string; recipes mean a float, as YAML 1.2 does."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?|[0-9][0-9_]*[eE][-+]?[0-9]+"
               r"|\.[0-9_]+(?:[eE][-+]?[0-9]+)?|\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    list("-+0123456789."),
)


def _yaml(text: str):
    return yaml.load(text, Loader=_Loader)  # noqa: S506  (a SafeLoader subclass)


def _suggest(key: str, allowed) -> str:
    close = difflib.get_close_matches(key, list(allowed), n=1, cutoff=0.5)
    return f" Did you mean `{close[0]}`?" if close else ""


def merge_recipe(base: dict, override: dict, *, where: str = "recipe") -> dict:
    """`override` laid over `base`, section by section; unknown sections or keys raise."""
    if not isinstance(override, dict):
        raise ConfigError(f"{where} must be a mapping of sections, got {type(override).__name__}.")
    out = copy.deepcopy(base)
    for section, values in override.items():
        if section not in SECTIONS:
            raise ConfigError(
                f"unknown section `{section}` in {where}; sections are {list(SECTIONS)}."
                + _suggest(str(section), SECTIONS)
            )
        if values is None:
            continue
        if not isinstance(values, dict):
            raise ConfigError(f"section `{section}` in {where} must be a mapping, got {values!r}.")
        for key, value in values.items():
            if key not in out[section]:
                raise ConfigError(
                    f"unknown key `{section}.{key}` in {where}; valid keys: "
                    f"{sorted(out[section])}." + _suggest(str(key), out[section])
                )
            out[section][key] = value
    return out


def parse_set(assignments: list[str]) -> dict:
    """`--set finetune.steps=10` items -> a partial recipe (values parsed as YAML scalars)."""
    out: dict[str, dict[str, Any]] = {}
    for a in assignments:
        key, eq, raw = a.partition("=")
        section, dot, name = key.partition(".")
        if not eq or not dot:
            raise ConfigError(f"`--set {a}` must look like section.key=value, e.g. finetune.steps=10.")
        out.setdefault(section, {})[name] = _yaml(raw)
    return out


def load_recipe_file(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"recipe file `{path}` does not exist.")
    try:
        raw = _yaml(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"recipe `{path}` is not valid YAML: {e}") from e
    return raw or {}


@dataclass(frozen=True)
class FinetuneSection:
    """The recipe's `finetune` section: the adapters' shape and the loop that trains them."""

    adapters: NLSConfig
    train: TrainConfig


@dataclass(frozen=True)
class Recipe:
    """A validated recipe: one config object per section, plus the merged raw dict."""

    model: ModelConfig
    data: DataConfig
    sparsify: SparsityConfig
    quantize: Int4Config
    finetune: FinetuneSection
    select: SelectConfig
    merge: MergeConfig
    eval: EvalConfig
    export: ExportConfig
    raw: dict

    @functools.cached_property
    def splits(self):
        """The recipe's train / held-out / validation items (`RunData`), read once and shared."""
        from .run_data import RunData

        return RunData(self)


def _conforms(value, tp) -> bool:
    """Whether a YAML value fits a config field's annotation (lists stand in for tuples)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return True
    if origin is Literal:
        return value in args
    if origin in (typing.Union, types.UnionType):
        return any(_conforms(value, a) for a in args)
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            return False
        if len(args) == 2 and args[1] is Ellipsis or origin is list:
            return all(_conforms(v, args[0]) for v in value)
        return len(value) == len(args) and all(_conforms(v, a) for v, a in zip(value, args, strict=True))
    if origin is dict:
        return isinstance(value, dict) and all(
            _conforms(k, args[0]) and _conforms(v, args[1]) for k, v in value.items())
    return True


def _type_name(tp) -> str:
    name = tp.__name__ if isinstance(tp, type) else str(tp)
    return name.replace("typing.", "").replace("NoneType", "null").replace("None", "null").replace(
        "tuple[", "list[")


def _build(cls, values: dict, section: str):
    names = {f.name for f in fields(cls)}
    kwargs = {k: v for k, v in values.items() if k in names}
    hints = typing.get_type_hints(cls)
    for k, v in kwargs.items():
        if typing.get_origin(hints[k]) is Literal and v not in typing.get_args(hints[k]):
            raise ConfigError(f"`{section}.{k}`={v!r}; use one of {list(typing.get_args(hints[k]))}.")
        if not _conforms(v, hints[k]):
            raise ConfigError(f"`{section}.{k}`={v!r} has the wrong type; expected "
                              f"{_type_name(hints[k])}.")
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise ConfigError(f"bad value for {cls.__name__}: {e}") from e


def build_recipe(*layers: dict | tuple[str, dict]) -> Recipe:
    """Defaults, then each partial recipe in order; every value validated by its config class.

    A layer is a partial recipe dict, or `(where, dict)` to name its source in error messages.
    """
    raw = copy.deepcopy(DEFAULT_RECIPE)
    for layer in layers:
        where, values = layer if isinstance(layer, tuple) else ("recipe", layer)
        raw = merge_recipe(raw, values, where=where)
    adapters = _build(NLSConfig, raw["finetune"], "finetune")
    train = _build(TrainConfig, raw["finetune"], "finetune")
    if train.lr is None:
        train = dataclasses.replace(train, lr=adapters.default_lr)
    return Recipe(
        model=_build(ModelConfig, raw["model"], "model"),
        data=_build(DataConfig, raw["data"], "data"),
        sparsify=_build(SparsityConfig, raw["sparsify"], "sparsify"),
        quantize=_build(Int4Config, raw["quantize"], "quantize"),
        finetune=FinetuneSection(adapters=adapters, train=train),
        select=_build(SelectConfig, raw["select"], "select"),
        merge=_build(MergeConfig, raw["merge"], "merge"),
        eval=_build(EvalConfig, raw["eval"], "eval"),
        export=_build(ExportConfig, raw["export"], "export"),
        raw=raw,
    )


def recipe_yaml(raw: dict) -> str:
    return yaml.safe_dump(raw, sort_keys=False)
