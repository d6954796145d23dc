"""`verify_export`: re-read an export's IR and check it against the merge stage it came from.

Why our own verify: optimum-intel exports and NNCF compresses, but nothing checks that the IR
still holds our sparsity and our exact INT4 grid; this reads the IR's constants back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..artifacts import load_stage
from ..quantization.storage import read_int4
from ..run_dir import merge_dir_of_export
from .api import PARITY_CONFIG, export_properties
from .config import MODEL_XML, ExportConfig
from .ir_weights import IRWeight, read_ir_weights


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
    weights_checked: int = 0
    weights_mismatch: dict[str, str] = field(default_factory=dict)  # layer FQN -> what differs
    weights_skipped: dict[str, str] = field(default_factory=dict)  # layer FQN -> why not compared
    max_abs_logit_diff: float = float("nan")
    logit_tol: float = 0.0
    greedy_match: bool = True
    parity_required: bool = True  # False for W8A8: activations are quantized, torch's are not
    rows: list[tuple[str, str, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        parity = self.max_abs_logit_diff <= self.logit_tol and self.greedy_match
        return (not self.missing and self.new_nonzeros == 0 and not self.int4_mismatch
                and not self.weights_mismatch and (parity or not self.parity_required))

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
                "weights_checked": self.weights_checked, "weights_mismatch": self.weights_mismatch,
                "weights_skipped": self.weights_skipped,
                "max_abs_logit_diff": self.max_abs_logit_diff, "logit_tol": self.logit_tol,
                "greedy_match": self.greedy_match}


def _mark(ok: bool) -> str:
    return "ok" if ok else "MISMATCH"


def verify_export(export_dir: Path, merge_dir: Path | None = None, *, prompts=None,
                  logit_tol: float | None = None, greedy_tokens: int = 8) -> VerifyReport:
    """Re-read an export and check it against the merge stage it came from.

    1. sparsity: every masked layer's IR weight is zero wherever masks.safetensors says pruned;
    2. INT4 exactness (int4 exports): u4 integers, f16 scales and u4 zero points equal the merge's;
    3. weights: every other Linear and embedding weight of the IR is the merge's
       `model.safetensors` weight as the export stores it: an FP16/FP32 constant equals the
       merge's weight rounded to that type, bit for bit; an INT8 one (embeddings/lm_head of an
       int4 export) lies within one quantization step of it (see `_compare_weight`). W8A8 layers
       of a `sparse-int8` export are listed as not compared (SmoothQuant rescaled them);
    4. logits: OpenVINO (fp32 inference, no dynamic activation quantization) vs torch on prompts;
       the torch reference takes the IR's own weights for layers check 2 does not fix, so this
       check isolates the graph (check 3 is what ties those weights to the merge);
    5. greedy decoding of a few tokens gives the same ids.
    """
    from ..sparsity.masks import load_masks

    export_dir = Path(export_dir)
    rec = load_stage(export_dir, expect="export", require=(MODEL_XML,))
    merge_dir = Path(merge_dir) if merge_dir is not None else merge_dir_of_export(export_dir)
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

    reference, tok = _reference(merge_dir, ir, report.format, set(int4))
    # the weights check reads the merge's values from its files; `reference` only names them
    _check_weights(report, ir, reference, merge_dir, covered=set(int4))
    report.parity_required = report.format != "sparse-int8"
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


def _check_weights(report: VerifyReport, ir: dict[str, IRWeight], model, merge_dir: Path,
                   covered: set[str]) -> None:
    """Check 3 of `verify_export`: compare the IR's weights with the merge's own, add the row.

    The layers are every Linear of the merged `model` plus every layer the IR holds (embeddings);
    `covered` (the INT4 layers) are compared bit for bit by the INT4 row instead.
    """
    from torch import nn

    linears = {f for f, m in model.named_modules() if isinstance(m, nn.Linear)}
    fqns = sorted((linears | set(ir)) - covered)
    merged = _merge_weights(merge_dir, model, fqns)
    exact: dict[str, int] = {}  # IR type -> layers bit-identical to the merge's rounded weight
    stepped, worst = set(), 0.0  # IR integer types within a step; worst error in steps
    for fqn in fqns:
        w = ir.get(fqn)
        if w is None:
            report.weights_mismatch[fqn] = "not found in the IR"
            continue
        if fqn not in merged:
            report.weights_mismatch[fqn] = "the merged model has no such weight"
            continue
        if report.format == "sparse-int8" and w.q is not None and fqn in linears:
            report.weights_skipped[fqn] = "W8A8: SmoothQuant rescaled its input channels"
            continue
        report.weights_checked += 1
        problem, steps = _compare_weight(w, merged[fqn].float().numpy())
        if problem:
            report.weights_mismatch[fqn] = problem
        elif w.q is None:
            exact[w.kind] = exact.get(w.kind, 0) + 1
        else:
            stepped.add(w.kind)
            worst = max(worst, steps)
    parts = [f"{n} {kind} bit-identical to merge/model.safetensors rounded to {kind}"
             for kind, n in sorted(exact.items())]
    n_stepped = report.weights_checked - len(report.weights_mismatch) - sum(exact.values())
    if n_stepped:
        parts.append(f"{n_stepped} {'/'.join(sorted(stepped))} within one quantization step σ of "
                     f"merge/model.safetensors (worst {worst:.2f}σ)")
    if covered:
        parts.append(f"{len(covered)} INT4: see the INT4 row")
    if report.weights_skipped:
        parts.append(f"{len(report.weights_skipped)} W8A8 not compared (SmoothQuant rescaled them)")
    bad = list(report.weights_mismatch.items())
    if bad:
        parts.append(f"{len(bad)} differ: " + "; ".join(f"{f} ({why})" for f, why in bad[:3])
                     + (f"; +{len(bad) - 3} more" if len(bad) > 3 else ""))
    report.rows.append(("weights equal the merge's", _mark(not bad), "; ".join(parts)))


def _merge_weights(merge_dir: Path, model, fqns: list[str]) -> dict[str, torch.Tensor]:
    """Layer FQN -> its weight as the merge stage saved it (read from the files, not from `model`,
    which only says which saved name a tied weight such as lm_head's goes by)."""
    import json

    from safetensors import safe_open

    index = merge_dir / "model.safetensors.index.json"  # a sharded save_pretrained
    if index.is_file():
        where = json.loads(index.read_text())["weight_map"]
    else:
        with safe_open(merge_dir / "model.safetensors", framework="pt") as f:
            where = dict.fromkeys(f.keys(), "model.safetensors")
    aliases: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        aliases.setdefault(id(p), []).append(name)
    out = {}
    for fqn in fqns:
        try:
            weight = model.get_submodule(fqn).weight
        except AttributeError:
            continue
        key = next((n for n in aliases.get(id(weight), ()) if n in where), None)
        if key is not None:
            with safe_open(merge_dir / where[key], framework="pt") as f:
                out[fqn] = f.get_tensor(key)
    return out


def _compare_weight(w: IRWeight, W: np.ndarray) -> tuple[str, float]:
    """('' or what differs, worst error in quantization steps) of IR weight `w` vs the merge's
    float32 weight `W` (out, in).

    A plain f16/f32 constant must be `W` rounded once to its type, bit for bit: OpenVINO's FP16
    compression rounds to nearest even, as numpy does (subnormals included), but saturates at
    ±65504 where numpy gives ±inf, so `W` is clipped first. Integer weights (NNCF's INT8 of
    embeddings/lm_head) are on a grid the export chose, so |σ(q − z) − W| ≤ σ elementwise: rounding
    to the grid costs ½σ, and σ is stored in f16 after q was computed with the unrounded scale,
    which adds up to |q − z|·|Δσ| ≤ 255·2⁻¹¹σ ≈ ⅛σ. A change smaller than one step goes unseen there.
    """
    if w.shape != tuple(W.shape):
        return f"shape {w.shape}, the merge's {tuple(W.shape)}", 0.0
    if w.q is None:
        types = {"f16": (np.float16, np.uint16), "f32": (np.float32, np.uint32)}
        if w.kind not in types:
            return f"{w.kind} constant: no rule to compare it", 0.0
        dtype, bits = types[w.kind]
        fmax = float(np.finfo(dtype).max)
        got, want = w.plain.reshape(w.shape).astype(dtype), np.clip(W, -fmax, fmax).astype(dtype)
        n = int((got.view(bits) != want.view(bits)).sum())
        if n:
            d = float(np.abs(got.astype(np.float32) - want.astype(np.float32)).max())
            return f"{n}/{W.size} values are not the merge's rounded to {w.kind}, max |Δ| {d:.2e}", 0.0
        return "", 0.0
    step = np.abs(np.repeat(w.scales.astype(np.float32), w.shape[1] // w.scales.shape[1], axis=1))
    err = np.abs(w.dequantized() - W)
    n = int((err > step).sum())
    worst = float((err / np.maximum(step, np.finfo(np.float32).tiny)).max())
    if n:
        return f"{n}/{W.size} {w.kind} values over one step σ from the merge's, worst {worst:.1f}σ", worst
    return "", worst


def ir_reference(export_dir: Path, merge_dir: Path | None = None):
    """(model, tokenizer): the merged torch model as the export holds it, i.e. with the IR's own
    decoded weights for the layers the merge does not pin bit for bit (INT8 embeddings/lm_head
    of an int4 export, every weight of an fp16 export). OpenVINO should reproduce it up to float
    summation order: the like-for-like reference for logits and accuracy. A `sparse-int8` export
    keeps torch's own weights (its IR weights are SmoothQuant-rescaled)."""
    export_dir = Path(export_dir)
    fmt = load_stage(export_dir, expect="export", require=(MODEL_XML,)).config["format"]
    merge_dir = Path(merge_dir) if merge_dir is not None else merge_dir_of_export(export_dir)
    int4 = set(read_int4(merge_dir)) if fmt == "int4" else set()
    return _reference(merge_dir, read_ir_weights(export_dir / MODEL_XML), fmt, int4)


def _reference(merge_dir: Path, ir: dict[str, IRWeight], fmt: str, int4_layers: set[str]):
    """`ir_reference` from what `verify_export` has already read."""
    from ..models import load_model

    model, tok = load_model(str(merge_dir))
    if fmt != "sparse-int8":  # W8A8's IR weights are SmoothQuant-rescaled: keep torch's own
        _take_ir_weights_(model, ir, keep=int4_layers)
    return model, tok


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
