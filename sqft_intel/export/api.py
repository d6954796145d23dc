"""`export_`, `generate`, `chat`: OUT/merge -> OUT/openvino, and run with OpenVINO GenAI.

The checks of an export against its merge live in `verify.py`.
"""

from __future__ import annotations

from pathlib import Path

from ..artifacts import load_stage, save_stage
from ..errors import ArtifactError, ConfigError
from ..quantization.storage import INT4_FILE, has_int4, read_int4
from .config import MODEL_XML, ExportConfig

# torch-like CPU arithmetic for parity checks: fp32 math, no dynamic quantization of activations,
# and an f32 KV cache (the IR's f16 cache moves decode-step logits by 3e-3 to 6e-3 on the bundled
# model while the prompt's logits match to 7e-5: measured, README "Export").
PARITY_CONFIG = {"INFERENCE_PRECISION_HINT": "f32", "DYNAMIC_QUANTIZATION_GROUP_SIZE": "0",
                 "KV_CACHE_PRECISION": "f32"}


def resolve_format(config: ExportConfig, merge_dir: Path) -> str:
    int4 = has_int4(merge_dir)
    if config.format == "auto":
        return "int4" if int4 else "fp16"
    if config.format == "int4" and not int4:
        raise ConfigError(f"`export.format`='int4' needs an INT4 merge ({merge_dir} has no "
                          f"{INT4_FILE}); train with mode 'qa-sparsepeft' or export 'fp16'.")
    return config.format


def export_(merge_dir: Path, out_dir: Path, config: ExportConfig, *, fingerprint: str = "",
            calib_texts: list[str] | None = None) -> str:
    """Write the OpenVINO export of a merge stage into `out_dir` atomically; returns the format.

    Raises ConfigError for a format the merge cannot give (before any work).
    """
    from ..models import load_model
    from ..sparsity.masks import load_masks, save_masks
    from .ir import export_fp, export_int4_exact, export_tokenizer

    merge_dir = Path(merge_dir)
    load_stage(merge_dir, expect="merge", require=("config.json", "model.safetensors"))
    fmt = resolve_format(config, merge_dir)
    if fmt == "sparse-int8" and not calib_texts:
        raise ConfigError("`export.format`='sparse-int8' quantizes activations and needs "
                          "calibration text; pass `calib_texts`.")
    model, tok = load_model(str(merge_dir))
    masks = load_masks(merge_dir)

    def write(tmp: Path) -> None:
        if fmt == "int4":
            example = dict(tok("The capital of France is", return_tensors="pt", return_token_type_ids=False))
            export_int4_exact(model, read_int4(merge_dir), tmp, other_layers=config.other_layers,
                              example=example)
        elif fmt == "fp16":
            export_fp(model, tmp)
        else:
            from .sparse_int8 import export_sparse_int8

            export_sparse_int8(model, tok, tmp, calib_texts=calib_texts)
        export_tokenizer(tok, tmp)
        save_masks(masks, tmp)

    save_stage(out_dir, write, stage="export", parent="merge",
               config={**_asdict(config), "format": fmt}, metrics={}, fingerprint=fingerprint)
    return fmt


def _asdict(config: ExportConfig) -> dict:
    from dataclasses import asdict

    d = asdict(config)
    d["verify_prompts"] = list(d["verify_prompts"])
    return d


# ---------------------------------------------------------------- run it
def generate(export_dir: Path, prompt: str, *, max_new_tokens: int = 64, device: str = "CPU",
             stream=None, chat: bool = False) -> str:
    """Greedy generation from an export with OpenVINO GenAI; `stream(text)` gets each piece."""
    pipe, cfg = _pipeline(export_dir, device, max_new_tokens)
    cfg.apply_chat_template = chat
    return str(pipe.generate(prompt, cfg, _streamer(stream)))


def _pipeline(export_dir: Path, device: str, max_new_tokens: int):
    """(LLMPipeline, greedy GenerationConfig) for an export directory."""
    import openvino_genai as ov_genai

    export_dir = Path(export_dir)
    if not (export_dir / MODEL_XML).is_file():
        raise ArtifactError(f"`{export_dir}` holds no {MODEL_XML}; run `sqft export` first.")
    pipe = ov_genai.LLMPipeline(str(export_dir), device, **export_properties(export_dir, device))
    cfg = pipe.get_generation_config()  # generation_config.json's eos (a fresh config would take
    cfg.max_new_tokens = max_new_tokens  # the tokenizer's, which GGUF conversions can get wrong)
    cfg.do_sample = False
    return pipe, cfg


def export_properties(export_dir: Path, device: str) -> dict:
    """Compile properties recorded by the export (the sparse-weight rate of `sparse-int8`)."""
    from .sparse_int8 import compile_properties

    if device.upper() != "CPU":
        return {}
    try:
        rec = load_stage(export_dir, expect="export")
    except ArtifactError:  # an IR made elsewhere: no recorded properties
        return {}
    return compile_properties(rec.config.get("format", ""), rec.config.get("sparse_rate", 1.0))


def _streamer(stream):
    if stream is None:
        return None

    def on_piece(piece: str) -> bool:
        stream(piece)
        return False  # False: keep generating

    return on_piece


def chat(export_dir: Path, *, max_new_tokens: int = 128, device: str = "CPU", stream=print,
         read=input) -> None:
    """A terminal chat on OpenVINO GenAI's chat mode (history kept by the pipeline)."""
    pipe, cfg = _pipeline(export_dir, device, max_new_tokens)
    pipe.start_chat()
    try:
        while True:
            try:
                text = read("you> ")
            except EOFError:
                break
            if text.strip() in ("", "/exit", "/quit"):
                break
            pipe.generate(text, cfg, _streamer(stream))
            stream("\n")
    finally:
        pipe.finish_chat()
