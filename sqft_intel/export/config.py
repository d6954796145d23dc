"""Configuration of the OpenVINO export stage."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..errors import ConfigError

FORMATS = ("auto", "int4", "fp16", "sparse-int8")
MODEL_XML = "openvino_model.xml"  # the IR file name optimum-intel and OpenVINO GenAI look for


@dataclass(frozen=True)
class ExportConfig:
    """How OUT/merge becomes an OpenVINO IR in OUT/openvino.

    Args:
        enabled: `sqft run` ends with export + verify + a short generation (needs the
            `openvino` extra, which the README's set-up installs).
        format: `auto` (exact INT4 for an INT4 merge, FP16 otherwise), `int4` (exact: the IR's u4
            integers, scales and zero points are the merge stage's, never re-quantized), `fp16`, or
            `sparse-int8` (W8A8 through NNCF with every zero kept, for OpenVINO's sparse-weight
            CPU kernels).
        other_layers: precision of the layers the INT4 merge does not hold (embeddings, lm_head):
            `int8` (NNCF's per-channel INT8, optimum-intel's default) or `fp16`.
        sparse_rate: `sparse-int8` only: the CPU plugin's
            CPU_SPARSE_WEIGHTS_DECOMPRESSION_RATE (layers at least this sparse use sparse kernels).
        verify_prompts: prompts whose OpenVINO logits `sqft verify` compares with torch.
        logit_tol: largest |Δlogit| `sqft verify` accepts (fp32 inference on both sides).
        max_new_tokens: length of the demo generation at the end of `sqft run`.
    """

    enabled: bool = True
    format: Literal["auto", "int4", "fp16", "sparse-int8"] = "auto"
    other_layers: Literal["int8", "fp16"] = "int8"
    sparse_rate: float = 0.5
    verify_prompts: tuple[str, ...] = (
        "Question: Which gas do plants take in from the air?\nAnswer:",
        "The capital of France is",
    )
    logit_tol: float = 2e-3
    max_new_tokens: int = 24

    def __post_init__(self):
        if self.format not in FORMATS:
            raise ConfigError(f"`export.format`={self.format!r}; use one of {list(FORMATS)}.")
        if self.other_layers not in ("int8", "fp16"):
            raise ConfigError(f"`export.other_layers`={self.other_layers!r}; use 'int8' or 'fp16'.")
        if not 0.0 < self.sparse_rate <= 1.0:
            raise ConfigError(f"`export.sparse_rate`={self.sparse_rate} must be in (0, 1].")
        object.__setattr__(self, "verify_prompts", tuple(self.verify_prompts))
        if not self.verify_prompts or not all(isinstance(p, str) and p for p in self.verify_prompts):
            raise ConfigError("`export.verify_prompts` must be a non-empty list of non-empty strings.")
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise ConfigError(f"`export.max_new_tokens`={self.max_new_tokens!r} must be an int >= 1.")
