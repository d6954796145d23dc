"""sqft_intel: SQFT (sparse, low-precision PEFT) end to end on Intel hardware.

Everything public is importable from here; submodules are implementation detail. Importing this
package does not import OpenVINO, NNCF or optimum.
"""

__version__ = "0.1.0"

from .adapters.api import (
    AdapterResult,
    add_adapters_,
    load_adapters_,
    sample_ranks_,
    save_adapters,
    save_peft_adapter,
    set_active_ranks_,
)
from .adapters.config import NLSConfig
from .adapters.elastic_lora import ElasticLoraLinear
from .artifacts import StageRecord, load_stage
from .data import MCItem, load_jsonl, load_train_items, load_val_items
from .errors import ArtifactError, ConfigError, SqftError, SqftWarning, UnsupportedModelError
from .evaluation.scoring import MCScore, score_mc
from .finetune.config import TrainConfig
from .finetune.loop import TrainResult, finetune_
from .merge.api import MergeResult, merge_
from .models import load_model
from .recipe import Recipe, build_recipe
from .sparsity.api import SparsityResult, load_masks, sparsify_
from .sparsity.config import SparsityConfig

__all__ = [
    # verbs
    "sparsify_", "add_adapters_", "finetune_", "sample_ranks_", "set_active_ranks_", "merge_",
    "score_mc",
    # configs and recipes
    "SparsityConfig", "NLSConfig", "TrainConfig", "Recipe", "build_recipe",
    # results, modules and artifacts
    "SparsityResult", "AdapterResult", "TrainResult", "MergeResult", "MCScore", "ElasticLoraLinear",
    "StageRecord", "load_stage", "load_masks", "save_adapters", "load_adapters_", "save_peft_adapter",
    "load_model", "MCItem", "load_train_items", "load_val_items", "load_jsonl",
    # errors
    "SqftError", "ConfigError", "UnsupportedModelError", "ArtifactError", "SqftWarning",
]
