"""OpenVINO-vs-torch logit gap of an sqft export, one CPU compile property changed at a time.

For each run and each of its export's verify prompts: max |Δlogit| between OpenVINO and the torch
reference `sqft verify` uses (`ir_reference`: the merge, with the IR's own INT8 embedding/lm_head),
for the prompt pass ("prefill", every position) and for one decode step through OpenVINO's KV
cache (the prompt, then torch's greedy next token with past_key_values), under
- torch-like: verify's PARITY_CONFIG (INFERENCE_PRECISION_HINT f32, DYNAMIC_QUANTIZATION_GROUP_SIZE 0,
  KV_CACHE_PRECISION f32);
- torch-like with one change: KV cache f16 (what the IR's rt_info asks for), KV cache u8, dynamic
  quantization of activations in groups of 32, bf16 precision hint;
- the CPU defaults (plus the IR's rt_info).
Plus the floors (torch fp32 vs torch fp64; OpenVINO torch-like vs torch fp64), whether greedy
generation still matches torch's, and the activation magnitudes that explain the big gaps: max
|hidden state| per layer output and max |input| to an INT4 matmul, with its layer.

Usage: python benchmarks/logit_gap.py --run DIR [--label TEXT] [--run DIR [--label TEXT] ...]
  --run: a finished `sqft run` directory with merge/ and openvino/ (only read); repeatable.
  --label: a name for the run in the table, one per --run in order (default: the run's finetune
    mode, qa_base and steps, from its summary.json).
  --threads: torch and OpenVINO threads (default 1: the gaps do not need more).
Writes benchmarks/results/logit_gap.json.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from _common import write_result  # noqa: E402

import sqft_intel as sq  # noqa: E402
from sqft_intel.device import set_threads  # noqa: E402
from sqft_intel.export.api import PARITY_CONFIG  # noqa: E402
from sqft_intel.export.verify import ir_reference, load_ov_model  # noqa: E402

GREEDY_TOKENS = 8
TORCH_LIKE = "torch-like (verify's PARITY_CONFIG)"
# row -> changes to PARITY_CONFIG; None: no PARITY_CONFIG at all (the CPU plugin's defaults)
SETTINGS: dict[str, dict | None] = {
    TORCH_LIKE: {},
    "torch-like + KV cache f16 (IR rt_info)": {"KV_CACHE_PRECISION": "f16"},
    "torch-like + KV cache u8": {"KV_CACHE_PRECISION": "u8"},
    "torch-like + dyn. quantization group 32": {"DYNAMIC_QUANTIZATION_GROUP_SIZE": "32"},
    "torch-like + bf16 precision hint": {"INFERENCE_PRECISION_HINT": "bf16"},
    "CPU defaults (+ IR rt_info)": None,
}
REPORTED = ("INFERENCE_PRECISION_HINT", "DYNAMIC_QUANTIZATION_GROUP_SIZE", "KV_CACHE_PRECISION")


def ov_config(change: dict | None, threads: int) -> dict:
    base = {} if change is None else {**PARITY_CONFIG, **change}
    return {**base, "INFERENCE_NUM_THREADS": str(threads)}


def default_label(run: Path) -> str:
    ft = json.loads(sq.RunDir(run).summary.read_text())["recipe"]["finetune"]
    return f"{ft['mode']}, qa_base {ft['qa_base']}, {ft['steps']} steps"


@torch.no_grad()
def torch_targets(model, tok, inputs: list[dict]) -> list[dict]:
    """Per prompt: fp32 prompt logits (1, T, V), the greedy next token (1, 1), the logits of the
    decode step that feeds it (1, V), and torch's greedy generation."""
    kw = {"max_new_tokens": GREEDY_TOKENS, "do_sample": False, "pad_token_id": tok.pad_token_id}
    out = []
    for ids in inputs:
        logits = model(**ids).logits.float()
        nxt = logits[:, -1:].argmax(-1)
        longer = torch.cat([ids["input_ids"], nxt], 1)
        decode = model(input_ids=longer, attention_mask=torch.ones_like(longer)).logits[:, -1].float()
        out.append({"logits": logits, "next": nxt, "decode": decode, "greedy": model.generate(**ids, **kw)})
    return out


@torch.no_grad()
def activations(model, inputs: list[dict], int4_layers: set[str]) -> dict:
    """Max |hidden state| over the prompts, as HF lists them (embeddings, each layer's output, the
    last one after the final norm; `hidden_max_layer` indexes that list, so 12 is the output of
    model.layers.11), and the max |input| to an INT4 matmul with its layer."""
    seen = {"int4_input_max": 0.0, "int4_input_max_layer": ""}

    def hook(name):
        def record(_mod, args, _out):
            v = float(args[0].abs().max())
            if v > seen["int4_input_max"]:
                seen.update(int4_input_max=v, int4_input_max_layer=name)
        return record

    hooks = [m.register_forward_hook(hook(n)) for n, m in model.named_modules() if n in int4_layers]
    try:
        per_prompt = [[float(h.abs().max()) for h in model(**ids, output_hidden_states=True).hidden_states]
                      for ids in inputs]
    finally:
        for h in hooks:
            h.remove()
    hidden = [max(layer) for layer in zip(*per_prompt, strict=True)]
    return {"hidden_max": hidden, "hidden_max_layer": hidden.index(max(hidden)), **seen}


@torch.no_grad()
def fp64_logits(model, inputs: list[dict]) -> list[torch.Tensor]:
    """Prompt logits of the reference in float64 (converts `model` in place: call it last)."""
    model.double()
    return [model(**ids).logits for ids in inputs]


def compiled_properties(ov_model) -> dict:
    """What the CPU plugin actually compiled with (element types as 'f32', 'bf16', 'u8')."""
    cm = ov_model.request.get_compiled_model()
    values = {k: cm.get_property(k) for k in REPORTED}
    return {k: v.get_type_name() if hasattr(v, "get_type_name") else str(v) for k, v in values.items()}


@torch.no_grad()
def ov_gap(export_dir: Path, config: dict, inputs: list[dict], targets: list[dict],
           ref64: list[torch.Tensor], pad_token_id: int) -> dict:
    """Max |Δlogit| of OpenVINO compiled with `config` against the torch targets."""
    ov = load_ov_model(export_dir, config)
    kw = {"max_new_tokens": GREEDY_TOKENS, "do_sample": False, "pad_token_id": pad_token_id}
    row = {"prefill": 0.0, "prefill_pos0": 0.0, "prefill_pos1plus": 0.0, "decode_step": 0.0,
           "prefill_vs_torch64": 0.0, "greedy_match": True}
    for ids, t, t64 in zip(inputs, targets, ref64, strict=True):
        first = ov(**ids, use_cache=True)
        diff = (first.logits.float() - t["logits"]).abs()  # (1, T, V)
        step = ov(input_ids=t["next"], past_key_values=first.past_key_values, use_cache=True,
                  attention_mask=torch.ones(1, ids["input_ids"].shape[1] + 1, dtype=torch.long))
        for key, v in (("prefill", diff.max()), ("prefill_pos0", diff[:, 0].max()),
                       ("prefill_pos1plus", diff[:, 1:].max()),
                       ("decode_step", (step.logits[:, -1].float() - t["decode"]).abs().max()),
                       ("prefill_vs_torch64", (first.logits.double() - t64).abs().max())):
            row[key] = max(row[key], float(v))
        row["greedy_match"] &= torch.equal(ov.generate(**ids, **kw), t["greedy"])
    return {**row, "compiled": compiled_properties(ov)}


def measure(run: Path, threads: int) -> dict:
    rd = sq.RunDir(run)
    export = sq.load_stage(rd.export, expect="export").config
    model, tok = ir_reference(rd.export, rd.merge)
    model.eval()
    inputs = [tok(p, return_tensors="pt", return_token_type_ids=False) for p in export["verify_prompts"]]
    targets = torch_targets(model, tok, inputs)
    acts = activations(model, inputs, set(sq.read_int4(rd.merge)))
    ref64 = fp64_logits(model, inputs)
    rows = {}
    for name, change in SETTINGS.items():
        rows[name] = ov_gap(rd.export, ov_config(change, threads), inputs, targets, ref64, tok.pad_token_id)
        print(f"  {name:<42} prefill {rows[name]['prefill']:.2e}  decode {rows[name]['decode_step']:.2e}  "
              f"{rows[name]['compiled']}", flush=True)
    t32_64 = [(t["logits"].double() - r).abs() for t, r in zip(targets, ref64, strict=True)]  # (1, T, V)
    floors = {"torch32_vs_torch64": max(float(d.max()) for d in t32_64),
              "torch32_vs_torch64_pos0": max(float(d[:, 0].max()) for d in t32_64),
              "ov_torch_like_vs_torch64": rows[TORCH_LIKE]["prefill_vs_torch64"]}
    return {"run": str(run), "format": export["format"], "prompts": list(export["verify_prompts"]),
            "logit_absmax": max(float(t["logits"].abs().max()) for t in targets),
            "floors": floors, "activations": acts, "rows": rows}


def print_table(runs: list[dict]) -> None:
    width = max(24, *(len(r["label"]) + 2 for r in runs))
    print(f"\nmax |Δlogit| vs torch fp32, prefill / decode step\n{'':<42}"
          + "".join(f"{r['label']:>{width}}" for r in runs))
    for name in SETTINGS:
        cells = [f"{r['rows'][name]['prefill']:.1e} / {r['rows'][name]['decode_step']:.1e}"
                 + ("" if r["rows"][name]["greedy_match"] else " *") for r in runs]
        print(f"{name:<42}" + "".join(f"{c:>{width}}" for c in cells))
    for key, name in (("torch32_vs_torch64", "floor: torch fp32 vs fp64 (prefill)"),
                      ("ov_torch_like_vs_torch64", "floor: OV torch-like vs torch fp64")):
        print(f"{name:<42}" + "".join(f"{r['floors'][key]:>{width}.1e}" for r in runs))
    print(f"{'max |logit|':<42}" + "".join(f"{r['logit_absmax']:>{width}.1f}" for r in runs))
    print(f"{'max |hidden state| (layer)':<42}" + "".join(
        f"{max(r['activations']['hidden_max']):>{width - 5}.0f} ({r['activations']['hidden_max_layer']:>2})"
        for r in runs))
    print(f"{'max |INT4 matmul input|':<42}" + "".join(
        f"{r['activations']['int4_input_max']:>{width}.0f}" for r in runs))
    print(f"{'  at':<42}" + "".join(
        f"{r['activations']['int4_input_max_layer'].removeprefix('model.'):>{width}}" for r in runs))
    print("(* greedy generation differs from torch's)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--run", type=Path, action="append", required=True,
                    help="a finished `sqft run` directory (repeatable)")
    ap.add_argument("--label", action="append", default=[], help="the run's name, one per --run in order")
    ap.add_argument("--threads", type=int, default=1, help="torch and OpenVINO threads")
    args = ap.parse_args()
    if args.label and len(args.label) != len(args.run):
        ap.error(f"{len(args.label)} --label for {len(args.run)} --run: give one per run, or none")
    set_threads(args.threads)
    labels = args.label or [default_label(r) for r in args.run]
    t0 = time.perf_counter()
    runs = []
    for run, label in zip(args.run, labels, strict=True):
        print(f"{label}: {run}", flush=True)
        runs.append({"label": label, **measure(run, args.threads)})
    print_table(runs)
    path = write_result("logit_gap", {
        "command": shlex.join(["python", "benchmarks/logit_gap.py", *sys.argv[1:]]),
        "greedy_tokens": GREEDY_TOKENS, "seconds": time.perf_counter() - t0,
        "settings": {name: ov_config(change, args.threads) for name, change in SETTINGS.items()},
        "runs": runs})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
