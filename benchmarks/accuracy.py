"""The shape of SQFT's accuracy table on the bundled model: one sparse base, one schedule, every row.

Rows (validation split of the task, zero-shot log-likelihood, fp32 scoring); every fine-tuned row
uses the same data, steps, batch, rank (r_max of the rank space) and seed:
  dense                           the pretrained model
  dense + LoRA, merged            single-rank adapters (PEFT LoRA's math), merged in FP
  sparse                          50 % Wanda
  sparse + LoRA, merged           the same LoRA on the sparse base, plain merge: densifies
  Shears (sparse + NLS, unmerged) elastic adapters, heuristic sub-adapter, kept beside the base
  SQFT + SparsePEFT, merged       masked elastic adapters, merged: sparse, FP
  sparse INT4 (GPTQ)              mask-aware GPTQ of the sparse model (asym, g64)
  SQFT (INT4 + NLS, unmerged)     elastic adapters on the INT4 base, kept beside it
  SQFT + QA-SparsePEFT, merged    merged into the base's INT4 grid: sparse and INT4
  naive: SparsePEFT merge -> RTN  the FP merge above re-quantized with fresh RTN scales
Each row reports the measured sparsity of its pruned layers, the nonzeros where Wanda pruned 
(effective weights: Q(W) for INT4 layers; for unmerged rows the base's, the dense adapters beside
it) and its precision.

Usage: python benchmarks/accuracy.py [--out runs/accuracy] [--steps 150] [--items N]
                                     [--recipe FILE] [--set SECTION.KEY=VALUE ...] [--json NAME]
Writes benchmarks/results/<NAME>.json (default `accuracy`) and a Markdown table beside it.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from _common import RESULTS, write_result  # noqa: E402

import sqft_intel as sq  # noqa: E402
from sqft_intel.adapters.api import adapter_modules, count_adapter_params  # noqa: E402
from sqft_intel.device import set_threads  # noqa: E402
from sqft_intel.recipe import build_recipe, load_recipe_file, parse_set  # noqa: E402


def effective_weights(model, masks) -> dict[str, torch.Tensor]:
    """Weight name -> the weight each masked layer computes with (Q(W) for INT4, the base's W for
    an unmerged adapter)."""
    out = {}
    for name in masks:
        m = model.get_submodule(name.removesuffix(".weight"))
        m = getattr(m, "base", m)  # an unmerged ElasticLoraLinear: its frozen base
        out[name] = m.dequantized_weight() if hasattr(m, "dequantized_weight") else m.weight.detach()
    return out


def measure(name: str, model, tok, items, masks, *, precision: str, merged: bool | None,
            train_seconds: float | None = None) -> dict:
    with torch.no_grad():
        w = effective_weights(model, masks)
    zeros = sum(int((w[n] == 0).sum()) for n in masks)
    total = sum(w[n].numel() for n in masks)
    new = sum(int((w[n][~masks[n]] != 0).sum()) for n in masks)  # nonzeros where Wanda pruned
    t0 = time.perf_counter()
    s = sq.score_mc(model, tok, items, batch_size=8, progress=False)
    adapters = count_adapter_params(model, active=True) if adapter_modules(model) else 0
    row = {"variant": name, "acc": s.acc, "acc_norm": s.acc_norm, "n": s.n,
           "sparsity": zeros / total, "new_nonzeros": new, "precision": precision,
           "adapters": "none" if merged is None else ("merged" if merged else "unmerged"),
           "adapter_params": adapters, "train_seconds": train_seconds,
           "eval_seconds": time.perf_counter() - t0}
    print(f"{name:<36} sparsity {row['sparsity']:6.1%}  acc {s.acc:6.1%}  acc_norm {s.acc_norm:6.1%}",
          flush=True)
    return row


def train(model, tok, recipe, adapters: sq.NLSConfig, masks, fp_weights=None) -> float:
    """Add `adapters` to `model`, train them on the recipe's schedule, set the heuristic ranks."""
    torch.manual_seed(recipe.finetune.train.seed)
    sq.add_adapters_(model, adapters, masks=masks, fp_weights=fp_weights)
    cfg = dataclasses.replace(recipe.finetune.train, lr=adapters.default_lr)
    res = sq.finetune_(model, tok, recipe.splits.train, cfg, progress=False)
    sq.set_active_ranks_(model, "heuristic")
    return res.seconds


def int4_base(work: Path):
    from sqft_intel.quantization.storage import load_int4_

    model, tok = sq.load_model(str(sq.RunDir(work).quantize))
    load_int4_(model, sq.RunDir(work).quantize)
    return model, tok


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("runs/accuracy"), help="work directory")
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--items", type=int, default=None, help="validation items (default all)")
    ap.add_argument("--recipe", type=Path, default=None, help="recipe file (default: the default)")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--json", default="accuracy", help="results name under benchmarks/results "
                    "('-' writes nothing)")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    set_threads(args.threads)
    layers = [load_recipe_file(args.recipe)] if args.recipe else []
    layers.append({"finetune": {"steps": args.steps, "mode": "qa-sparsepeft", "lr": None},
                   "eval": {"items": args.items}})
    if args.overrides:
        layers.append(parse_set(args.overrides))
    recipe = build_recipe(*layers)
    work = args.out
    t_start = time.perf_counter()
    sq.validate(recipe, running=("sparsify", "quantize"), out=work)
    for stage in ("sparsify", "quantize"):
        sq.run_stage(recipe, work, stage, progress=False)
    items = recipe.splits.eval
    masks = sq.load_masks(sq.RunDir(work).sparsify)
    nls = recipe.finetune.adapters
    single = dataclasses.replace(nls, mode="lora", rank_space=(nls.max_rank,))  # plain LoRA
    rows = []
    sparse_dir = str(sq.RunDir(work).sparsify)

    for base, source in (("dense", recipe.model.name_or_path), ("sparse", sparse_dir)):
        model, tok = sq.load_model(source)  # zero-shot, then plain LoRA merged (densifies)
        rows.append(measure(base, model, tok, items, masks, precision="fp32", merged=None))
        secs = train(model, tok, recipe, single, None)  # plain LoRA takes no mask
        sq.merge_(model, method="lora")
        rows.append(measure(f"{base} + LoRA, merged", model, tok, items, masks, precision="fp32",
                            merged=True, train_seconds=secs))

    model, tok = sq.load_model(sparse_dir)
    secs = train(model, tok, recipe, dataclasses.replace(nls, mode="lora"), masks)
    rows.append(measure("Shears (sparse + NLS), unmerged", model, tok, items, masks,
                        precision="fp32", merged=False, train_seconds=secs))

    model, tok = sq.load_model(sparse_dir)
    secs = train(model, tok, recipe, dataclasses.replace(nls, mode="sparsepeft"), masks)
    sq.merge_(model, masks=masks, method="sparsepeft")
    rows.append(measure("SQFT + SparsePEFT, merged", model, tok, items, masks, precision="fp32",
                        merged=True, train_seconds=secs))
    from sqft_intel.quantization.api import quantize_

    q = dataclasses.replace(recipe.quantize, method="rtn")
    quantize_(model, q, masks=masks, progress=False)
    rows.append(measure("naive: SparsePEFT merge -> RTN INT4", model, tok, items, masks,
                        precision="INT4", merged=True, train_seconds=secs))

    model, tok = int4_base(work)
    rows.append(measure(f"sparse INT4 ({recipe.quantize.method.upper()})", model, tok, items, masks,
                        precision="INT4", merged=None))
    secs = train(model, tok, recipe, dataclasses.replace(nls, mode="sqft"), masks)
    rows.append(measure("SQFT (INT4 + NLS), unmerged", model, tok, items, masks,
                        precision="INT4 + fp32 adapters", merged=False, train_seconds=secs))

    model, tok = int4_base(work)
    fp_weights = None
    if nls.qa_base == "fp":
        from safetensors.torch import load_file

        fp_weights = {n: w for n, w in load_file(sq.RunDir(work).sparsify / "model.safetensors").items()
                      if n in masks}
    secs = train(model, tok, recipe, dataclasses.replace(nls, mode="qa-sparsepeft"), masks, fp_weights)
    sq.merge_(model, masks=masks, method="sparsepeft")
    rows.append(measure("SQFT + QA-SparsePEFT, merged", model, tok, items, masks, precision="INT4",
                        merged=True, train_seconds=secs))

    order = ["dense", "dense + LoRA, merged", "sparse", "sparse + LoRA, merged",
             "Shears (sparse + NLS), unmerged", "SQFT + SparsePEFT, merged"]
    rows.sort(key=lambda r: order.index(r["variant"]) if r["variant"] in order else len(order))
    meta = {"task": recipe.data.task, "items": len(items), "steps": recipe.finetune.train.steps,
            "batch_size": recipe.finetune.train.batch_size, "rank_space": list(nls.rank_space),
            "sparsity": recipe.sparsify.target_sparsity,
            "quantize": {"method": recipe.quantize.method, "group_size": recipe.quantize.group_size}}
    table = markdown(rows, meta)
    print("\n" + table)
    if args.json != "-":
        command = "python benchmarks/accuracy.py " + " ".join(argv if argv is not None else sys.argv[1:])
        path = write_result(args.json, {"command": command.strip(), **meta,
                                        "wall_seconds": time.perf_counter() - t_start, "rows": rows})
        (RESULTS / f"{args.json}.md").write_text(table + "\n")
        print(f"wrote {path}")
    return 0


def markdown(rows: list[dict], meta: dict) -> str:
    """The Markdown table of a results payload (`meta`: task, items, sparsity, steps, ...)."""
    lines = [f"{meta['task']}, {meta['items']} validation items; {meta['sparsity']:.0%} Wanda; "
             f"{meta['steps']} steps, batch {meta['batch_size']}, ranks {meta['rank_space']} "
             "(heuristic sub-adapter)", "",
             "| variant | adapters | precision | sparsity | new nonzeros | acc | acc_norm |",
             "|---|---|---|---:|---:|---:|---:|"]
    for r in rows:  # "new nonzeros" (where Wanda pruned) means nothing for the dense rows
        new = "n/a" if r["variant"].startswith("dense") else r["new_nonzeros"]
        lines.append(f"| {r['variant']} | {r['adapters']} | {r['precision']} | {r['sparsity']:.1%} "
                     f"| {new} | {r['acc']:.1%} | {r['acc_norm']:.1%} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
