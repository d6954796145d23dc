"""`export_`, `verify_export`, `generate`: OUT/merge -> OUT/openvino, checked, and run.

Why our own verify: optimum-intel exports and NNCF compresses, but nothing checks that the IR
still holds our sparsity and our exact INT4 grid; `verify_export` reads the IR's constants back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..artifacts import atomic_dir, load_stage, write_stage_json
from ..errors import ArtifactError, ConfigError
from .config import ExportConfig
from .ir_weights import read_ir_weights

MODEL_XML = "openvino_model.xml"
PARITY_CONFIG = {"INFERENCE_PRECISION_HINT": "f32", "DYNAMIC_QUANTIZATION_GROUP_SIZE": "0"}


def resolve_format(config: ExportConfig, merge_dir: Path) -> str:
    from ..quantization.api import INT4_FILE

    has_int4 = (Path(merge_dir) / INT4_FILE).is_file()
    if config.format == "auto":
        return "int4" if has_int4 else "fp16"
    if config.format == "int4" and not has_int4:
        raise ConfigError(f"`export.format`='int4' needs an INT4 merge ({merge_dir} has no "
                          f"{INT4_FILE}); train with mode 'qa-sparsepeft' or export 'fp16'.")
    return config.format


def read_int4(stage_dir: Path) -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Layer FQN -> (q (out, in) uint8, scales fp16, zeros uint8) of a stage's int4.safetensors."""
    from safetensors.torch import load_file

    from ..quantization.api import INT4_FILE
    from ..quantization.int4 import unpack

    t = load_file(Path(stage_dir) / INT4_FILE)
    out = {}
    for key in t:
        if key.endswith(".weight.qweight"):
            fqn = key.removesuffix(".weight.qweight")
            out[fqn] = (unpack(t[key]), t[f"{fqn}.weight.scales"], t[f"{fqn}.weight.zeros"])
    return out


def export_(merge_dir: Path, out_dir: Path, config: ExportConfig, *, fingerprint: str = "",
            calib_texts: list[str] | None = None) -> str:
    """Write the OpenVINO export of a merge stage into `out_dir` atomically; returns the format.

    Raises ConfigError for a format the merge cannot give (before any work).
    """
    from ..models import load_model
    from ..sparsity.api import load_masks, save_masks
    from .ir import export_fp, export_int4_exact, export_tokenizer

    merge_dir = Path(merge_dir)
    load_stage(merge_dir, expect="merge", require=("config.json", "model.safetensors"))
    fmt = resolve_format(config, merge_dir)
    if fmt == "sparse-int8" and not calib_texts:
        raise ConfigError("`export.format`='sparse-int8' quantizes activations and needs "
                          "calibration text; pass `calib_texts`.")
    model, tok = load_model(str(merge_dir))
    masks = load_masks(merge_dir)
    with atomic_dir(out_dir) as tmp:
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
        write_stage_json(tmp, stage="export", parent="merge", config={**_asdict(config), "format": fmt},
                         metrics={}, fingerprint=fingerprint)
    return fmt


def _asdict(config: ExportConfig) -> dict:
    from dataclasses import asdict

    d = asdict(config)
    d["verify_prompts"] = list(d["verify_prompts"])
    return d


# ---------------------------------------------------------------- verify
@dataclass
class VerifyReport:
    """What `verify_export` found; `ok` only when every check passed."""

    format: str
    layers: int = 0
    new_nonzeros: int = 0
    sparsity_mismatch: list[str] = field(default_factory=list)
    int4_checked: int = 0
    int4_mismatch: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    max_abs_logit_diff: float = float("nan")
    logit_tol: float = 0.0
    greedy_match: bool = True
    parity_required: bool = True  # False for W8A8: activations are quantized, torch's are not
    rows: list[tuple[str, str, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        parity = self.max_abs_logit_diff <= self.logit_tol and self.greedy_match
        return (not self.missing and self.new_nonzeros == 0 and not self.int4_mismatch
                and (parity or not self.parity_required))

    def table(self) -> str:
        width = max(len(r[0]) for r in self.rows) if self.rows else 10
        lines = [f"{'check':<{width}}  {'result':<8} detail"]
        lines += [f"{a:<{width}}  {b:<8} {c}" for a, b, c in self.rows]
        lines.append(f"verify: {'PASS' if self.ok else 'FAIL'}")
        return "\n".join(lines)

    def as_dict(self) -> dict:
        return {"ok": self.ok, "format": self.format, "layers": self.layers,
                "new_nonzeros": self.new_nonzeros, "int4_checked": self.int4_checked,
                "int4_mismatch": self.int4_mismatch, "missing": self.missing,
                "max_abs_logit_diff": self.max_abs_logit_diff, "logit_tol": self.logit_tol,
                "greedy_match": self.greedy_match}


def _mark(ok: bool) -> str:
    return "ok" if ok else "MISMATCH"


def verify_export(export_dir: Path, merge_dir: Path | None = None, *, prompts=None,
                  logit_tol: float | None = None, greedy_tokens: int = 8) -> VerifyReport:
    """Re-read an export and check it against the merge stage it came from.

    1. sparsity: every masked layer's IR weight is zero wherever masks.safetensors says pruned;
    2. INT4 exactness (int4 exports): u4 integers, f16 scales and u4 zero points equal the merge's;
    3. logits: OpenVINO (fp32 inference, no dynamic activation quantization) vs torch on prompts;
       the torch reference takes the IR's own weights for layers the merge does not fix
       (embeddings/lm_head in INT8, every weight of an FP16 export), so the check isolates the graph;
    4. greedy decoding of a few tokens gives the same ids.
    """
    from ..models import load_model
    from ..sparsity.api import load_masks

    export_dir = Path(export_dir)
    rec = load_stage(export_dir, expect="export", require=(MODEL_XML,))
    merge_dir = Path(merge_dir) if merge_dir is not None else export_dir.parent / "merge"
    load_stage(merge_dir, expect="merge")
    cfg = ExportConfig(**{k: v for k, v in rec.config.items() if k != "format"})
    prompts = tuple(prompts or cfg.verify_prompts)
    report = VerifyReport(format=rec.config["format"],
                          logit_tol=cfg.logit_tol if logit_tol is None else logit_tol)
    masks = load_masks(merge_dir)
    ir = read_ir_weights(export_dir / MODEL_XML)
    int4 = read_int4(merge_dir) if report.format == "int4" else {}
    report.layers = len(masks)
    for name, keep in masks.items():
        fqn = name.removesuffix(".weight")
        w = ir.get(fqn)
        if w is None:
            report.missing.append(fqn)
            continue
        pruned = ~keep.numpy()
        if w.q is not None and w.zeros is not None:
            nz = int((w.q[pruned] != w.zeros.repeat(w.shape[1] // w.zeros.shape[1], 1)[pruned]).sum())
        else:
            nz = int((w.dequantized()[pruned] != 0).sum())
        report.new_nonzeros += nz
        if nz:
            report.sparsity_mismatch.append(fqn)
        if fqn in int4:
            q, s, z = (t.numpy() for t in int4[fqn])
            exact = (w.kind == "u4" and np.array_equal(w.q, q) and w.zeros is not None
                     and np.array_equal(w.scales.view(np.uint16), s.view(np.uint16))
                     and np.array_equal(w.zeros, z))
            report.int4_checked += 1
            if not exact:
                report.int4_mismatch.append(fqn)
    report.rows.append(("layers found in the IR", _mark(not report.missing),
                        f"{report.layers - len(report.missing)}/{report.layers}"))
    report.rows.append(("sparsity kept (no new nonzero)", _mark(report.new_nonzeros == 0),
                        f"{report.new_nonzeros} new nonzeros over {report.layers} masked layers"))
    if report.format == "int4":
        report.rows.append(("INT4 integers/scales/zeros exact", _mark(not report.int4_mismatch),
                            f"{report.int4_checked - len(report.int4_mismatch)}/{len(int4)} layers "
                            "bit-identical to the merge stage"))

    reference, tok = load_model(str(merge_dir))
    report.parity_required = report.format != "sparse-int8"
    if report.parity_required:  # W8A8's IR weights are SmoothQuant-rescaled: keep torch's own
        _take_ir_weights_(reference, ir, keep=set(int4))
    diff, greedy = _parity(export_dir, reference, tok, prompts, greedy_tokens)
    report.max_abs_logit_diff, report.greedy_match = diff, greedy
    info = "" if report.parity_required else " (W8A8 quantizes activations: information only)"
    report.rows.append(("OpenVINO vs torch logits",
                        _mark(diff <= report.logit_tol) if report.parity_required else "info",
                        f"max |Δ| {diff:.2e} (tolerance {report.logit_tol:.0e}) on {len(prompts)} "
                        f"prompts{info}"))
    report.rows.append((f"greedy {greedy_tokens} tokens identical",
                        _mark(greedy) if report.parity_required else "info", ""))
    return report


@torch.no_grad()
def _take_ir_weights_(model, ir, keep: set[str]) -> None:
    """Give the torch reference the IR's decoded weights, except for layers in `keep`."""
    for fqn, w in ir.items():
        if fqn in keep:
            continue
        try:
            mod = model.get_submodule(fqn)
        except AttributeError:
            continue
        if tuple(mod.weight.shape) == w.shape:
            mod.weight.copy_(torch.from_numpy(w.dequantized()))


def load_ov_model(export_dir: Path, ov_config: dict | None = None):
    from optimum.intel import OVModelForCausalLM

    return OVModelForCausalLM.from_pretrained(
        str(export_dir), ov_config={**export_properties(export_dir, "CPU"), **(ov_config or PARITY_CONFIG)})


@torch.no_grad()
def _parity(export_dir: Path, reference, tok, prompts, greedy_tokens: int) -> tuple[float, bool]:
    ov_model = load_ov_model(export_dir)
    diff, same = 0.0, True
    for p in prompts:
        ids = tok(p, return_tensors="pt", return_token_type_ids=False)
        a = reference(**ids).logits.float()
        b = ov_model(**ids).logits.float()
        diff = max(diff, float((a - b).abs().max()))
        kw = {"max_new_tokens": greedy_tokens, "do_sample": False, "pad_token_id": tok.pad_token_id}
        same &= torch.equal(reference.generate(**ids, **kw), ov_model.generate(**ids, **kw))
    return diff, bool(same)


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
