import json
from dataclasses import asdict

import pytest

from sqft_intel import ConfigError, NLSConfig, SparsityConfig, TrainConfig
from sqft_intel.quantization.config import Int4Config
from sqft_intel.recipe import DataConfig, EvalConfig, MergeConfig, ModelConfig, SelectConfig


@pytest.mark.parametrize("cfg", [
    SparsityConfig(), SparsityConfig(nm=(2, 4)), NLSConfig(), NLSConfig(mode="lora", rank_space=(8,)),
    TrainConfig(), ModelConfig(), DataConfig(), SelectConfig(), SelectConfig("custom", 16),
    MergeConfig(), EvalConfig(items=10), Int4Config(), Int4Config(method="rtn", group_size=-1),
])
def test_config_round_trips_through_json(cfg):
    assert type(cfg)(**json.loads(json.dumps(asdict(cfg)))) == cfg


@pytest.mark.parametrize("kwargs, match", [
    ({"sparsity": 1.0}, r"sparsity`=1.0 is outside \[0, 1\)"),
    ({"sparsity": -0.1}, "outside"),
    ({"nm": (4, 4)}, "n must be smaller than m"),
    ({"nm": (2,)}, "two positive ints"),
    ({"method": "magnitude"}, "only method is 'wanda'"),
    ({"target_modules": ()}, "empty"),
])
def test_bad_sparsity_config(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        SparsityConfig(**kwargs)


@pytest.mark.parametrize("kwargs, match", [
    ({"rank_space": ()}, "at least one positive"),
    ({"rank_space": (0, 8)}, "at least one positive"),
    ({"mode": "qlora"}, "use one of"),
    ({"mode": "qa-sparsepeft", "dropout": 0.1}, "no separate adapter path"),
    ({"qa_base": "int8"}, "'dequantized' or 'fp'"),
    ({"elastic_modules": ("o_proj",)}, "not in target_modules"),
])
def test_bad_nls_config(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        NLSConfig(**kwargs)


def test_rank_space_is_normalized_largest_first():
    assert NLSConfig(rank_space=[16, 32, 24, 32]).rank_space == (32, 24, 16)
    assert NLSConfig(rank_space=(32, 24, 16)).scaling == 2.0


@pytest.mark.parametrize("kwargs", [{"steps": 0}, {"lr": 2.0}, {"batch_size": -1},
                                    {"precision": "fp16"}, {"train_items": 0}])
def test_bad_train_config(kwargs):
    with pytest.raises(ConfigError, match="finetune"):
        TrainConfig(**kwargs)


def test_select_custom_needs_ranks():
    with pytest.raises(ConfigError, match="select.ranks"):
        SelectConfig("custom")
    with pytest.raises(ConfigError, match="select.strategy"):
        SelectConfig("best")
