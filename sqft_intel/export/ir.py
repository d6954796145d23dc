"""Merged model -> OpenVINO IR, through optimum-intel's exporter (stateful graph with KV cache).

The exact INT4 route: NNCF's `compress_weights` only builds the skeleton (packed
weights plus one decompressor hook per layer); we then overwrite every layer's integers, scales
and zero points with the merge stage's own, so nothing is re-quantized. NNCF's algorithms would
recompute scales from the merged weights and lose the bit-exact grid QA-SparsePEFT trained on.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from ..errors import ArtifactError, ConfigError
from ..quantization.int4 import pack

TASK = "text-generation-with-past"
TOKENIZER_XML, DETOKENIZER_XML = "openvino_tokenizer.xml", "openvino_detokenizer.xml"


def _export(model: nn.Module, out_dir: Path, *, fp16: bool) -> None:
    from optimum.exporters.openvino import export_from_model
    from optimum.intel import OVConfig

    export_from_model(model, out_dir, task=TASK, ov_config=OVConfig(dtype="fp16" if fp16 else "fp32"),
                      stateful=True)


def export_tokenizer(tokenizer, out_dir: Path) -> None:
    """HF tokenizer files plus tokenizer/detokenizer IR, which `openvino_genai.LLMPipeline` needs."""
    import openvino as ov
    from openvino_tokenizers import convert_tokenizer

    tokenizer.save_pretrained(out_dir)
    try:
        ov_tok, ov_detok = convert_tokenizer(tokenizer, with_detokenizer=True)
    except Exception as e:  # openvino-tokenizers rejects some decoders (e.g. GGUF's mixed one)
        raise ArtifactError(
            f"openvino-tokenizers cannot convert this tokenizer ({type(e).__name__}: {e}); "
            "a plain ByteLevel or SentencePiece tokenizer converts."
        ) from e
    ov.save_model(ov_tok, out_dir / TOKENIZER_XML)
    ov.save_model(ov_detok, out_dir / DETOKENIZER_XML)


def export_fp(model: nn.Module, out_dir: Path) -> None:
    """FP16 IR: every weight rounded once to fp16 (zeros stay exactly zero)."""
    _export(model, out_dir, fp16=True)


def _hook_key(fqn: str) -> str:
    return f"{fqn.replace('.', ':')}:weight__0"


def export_int4_exact(model: nn.Module, int4: dict[str, tuple[Tensor, Tensor, Tensor]], out_dir: Path,
                      *, other_layers: str, example: dict[str, Tensor]) -> list[str]:
    """INT4 IR whose u4 weights, f16 scales and u4 zero points are exactly `int4`'s.

    Args:
        int4: layer FQN -> (q (out, in) uint8, scales (out, in/g) fp16, zeros (out, in/g) uint8).
        other_layers: `int8` (NNCF INT8 for embeddings/lm_head) or `fp16`.
        example: one tokenized input NNCF traces the model with.

    Returns the FQNs written exactly. Raises ArtifactError if NNCF's skeleton does not hold one
    INT4 asymmetric decompressor per layer of `int4` (an NNCF change: the regression test fails).
    """
    import nncf
    from nncf.torch.function_hook.wrapper import get_hook_storage
    from nncf.torch.quantization.layers import INT4AsymmetricWeightsDecompressor

    groups = {fqn: q.shape[1] // s.shape[1] for fqn, (q, s, _) in int4.items()}
    if len(set(groups.values())) != 1:
        raise ConfigError(f"exact INT4 export needs one group size for all layers, got "
                          f"{sorted(set(groups.values()))}; quantize without per-layer fallback.")
    group = next(iter(groups.values()))
    linears = {f for f, m in model.named_modules() if isinstance(m, nn.Linear)}
    ignored = sorted(linears - set(int4) - {"lm_head"})  # leave them in FP, never guess their grid
    compressed = nncf.compress_weights(
        model, mode=nncf.CompressWeightsMode.INT4_ASYM, group_size=group, ratio=1.0,
        dataset=nncf.Dataset([example]),
        ignored_scope=nncf.IgnoredScope(names=ignored) if ignored else None,
        backup_mode=nncf.BackupMode.INT8_ASYM if other_layers == "int8" else nncf.BackupMode.NONE,
    )
    hooks = get_hook_storage(compressed).post_hooks
    with torch.no_grad():
        for fqn, (q, scales, zeros) in int4.items():
            key = _hook_key(fqn)
            hook = hooks[key]["0"] if key in hooks else None
            if not isinstance(hook, INT4AsymmetricWeightsDecompressor):
                raise ArtifactError(f"NNCF did not compress `{fqn}` to INT4 asymmetric "
                                    f"(got {type(hook).__name__}); cannot write its exact integers.")
            out_f, in_f = q.shape
            if tuple(hook.compressed_weight_shape) != (out_f, in_f // group, group):
                raise ArtifactError(f"NNCF's shape for `{fqn}` is {hook.compressed_weight_shape}, "
                                    f"expected {(out_f, in_f // group, group)}.")
            weight = compressed.get_submodule(fqn).weight
            # NNCF packs row-major over (out, in/g, g), element 2k in the low nibble: for whole
            # rows that is our (out, in/2) layout, so the bytes are the same
            weight.data = pack(q).reshape(weight.shape).contiguous()
            hook._scale.copy_(scales.reshape(hook._scale.shape))
            hook._zero_point.copy_(hook.pack_weight(zeros.reshape(hook.zero_point_shape)))
    _export(compressed, out_dir, fp16=other_layers == "fp16")
    return sorted(int4)
