"""sqft_intel: SQFT (sparse, low-precision PEFT) end to end on Intel hardware.

Everything public is importable from here; submodules are implementation detail. Importing this
package does not import OpenVINO, NNCF, optimum, PEFT or transformers: the export verbs import
them when called.
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
from .device import set_threads
from .errors import ArtifactError, ConfigError, SqftError, SqftWarning, UnsupportedModelError
from .evaluation.scoring import MCScore, score_mc
from .export.api import chat, export_, export_properties, generate
from .export.config import ExportConfig
from .export.verify import VerifyReport, ir_reference, verify_export
from .finetune.config import TrainConfig
from .finetune.loop import TrainResult, finetune_
from .merge.api import MergeResult, merge_
from .merge.config import MergeConfig
from .models import load_model
from .pipeline import run_pipeline, run_stage, validate
from .quantization.api import QuantizationResult, quantize_
from .quantization.config import Int4Config
from .quantization.modules import Int4Linear
from .quantization.storage import load_int4_, read_int4
from .recipe import Recipe, build_recipe, load_recipe_file
from .report import write_report
from .run_data import RunData
from .run_dir import RunDir, export_dir_of
from .sft import SFTItem, load_train_file
from .sparsity.api import SparsityResult, sparsify_
from .sparsity.config import SparsityConfig
from .sparsity.masks import load_masks, save_masks

__all__ = [
    # verbs
    "sparsify_", "quantize_", "add_adapters_", "finetune_", "sample_ranks_", "set_active_ranks_",
    "merge_", "export_", "verify_export", "ir_reference", "generate", "chat", "score_mc",
    # configs and recipes
    "SparsityConfig", "Int4Config", "NLSConfig", "TrainConfig", "MergeConfig", "ExportConfig",
    "Recipe", "build_recipe", "load_recipe_file",
    # the pipeline and its run directory
    "run_pipeline", "run_stage", "validate", "RunDir", "RunData", "export_dir_of", "write_report",
    # results, modules and artifacts
    "SparsityResult", "QuantizationResult", "AdapterResult", "TrainResult", "MergeResult",
    "MCScore", "VerifyReport", "ElasticLoraLinear", "Int4Linear", "StageRecord", "load_stage",
    "load_masks", "save_masks", "load_int4_", "read_int4", "save_adapters", "load_adapters_",
    "save_peft_adapter", "load_model", "MCItem", "load_train_items", "load_val_items", "load_jsonl",
    "SFTItem", "load_train_file",
    # machine
    "set_threads", "export_properties",
    # errors
    "SqftError", "ConfigError", "UnsupportedModelError", "ArtifactError", "SqftWarning",
]
