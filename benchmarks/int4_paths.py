"""Accuracy of the ways to an INT4 sparse fine-tuned model, on one sparse base and one schedule.

Rows (zero-shot log-likelihood on ARC-Easy validation and on the run's held-out train items, which
pick the default; every row from the same 50 % Wanda model and the same schedule):
- `sparsepeft-fp-merged`: SparsePEFT, merged in FP (sparse, not INT4);
- `qa-sparsepeft-int4-merged`: QA-SparsePEFT on the GPTQ INT4 base, INT4 merge (the default run);
- `qa-learned-scales`, `qa-fp-base`, `qa-fp-base-learned-scales`: the same with
  `finetune.learn_scales: true` and/or `finetune.qa_base: fp`, each merged to INT4;
- `naive-fp-merge-then-rtn`: the FP merge above, re-quantized with fresh RTN scales (INT4, asym,
  g64): what you get without QA;
- `nncf-fq-lora`: NNCF's `FQ_LORA` (fake quantization of W + B·A with trainable ranges, rank 32)
  trained with the same data, loss, batch and steps; scored on its effective weights Q(W + BA),
  which lose the sparsity (counted here).

Usage: python benchmarks/int4_paths.py --run runs/smollm2-135m-arc_easy [--steps 150] [--items N]
  --run: a finished default `sqft run` (sparsify, quantize, and a qa-sparsepeft merge).
Writes benchmarks/results/int4_paths.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from _common import RESULTS, write_result  # noqa: E402

import sqft_intel as sq  # noqa: E402
from sqft_intel.device import set_threads  # noqa: E402
from sqft_intel.recipe import build_recipe  # noqa: E402


def evaluate(model, tok, recipe, masks, fake_quant_weights=None) -> dict:
    """acc/acc_norm (fp32) on the validation and held-out items and, over the masked layers,
    sparsity and new nonzeros."""
    weights = fake_quant_weights or {n: p for n, p in model.named_parameters() if n in masks}
    zeros = sum(int((weights[n] == 0).sum()) for n in masks)
    total = sum(weights[n].numel() for n in masks)
    new = sum(int((weights[n][~masks[n]] != 0).sum()) for n in masks)
    t0 = time.perf_counter()
    s = sq.score_mc(model, tok, recipe.splits.eval, batch_size=8, progress=False)
    h = sq.score_mc(model, tok, recipe.splits.holdout, batch_size=8, progress=False)
    return {"acc": s.acc, "acc_norm": s.acc_norm, "n": s.n, "holdout_acc": h.acc,
            "holdout_acc_norm": h.acc_norm, "holdout_n": h.n, "sparsity": zeros / total,
            "new_nonzeros": new, "eval_seconds": time.perf_counter() - t0}


def fp_sparsepeft(run: Path, work: Path, recipe) -> Path:
    """The FP SparsePEFT chain on RUN's sparse model; returns its merge directory."""
    work.mkdir(parents=True, exist_ok=True)
    if not sq.RunDir(work).sparsify.exists():
        shutil.copytree(sq.RunDir(run).sparsify, sq.RunDir(work).sparsify)
    for stage in ("finetune", "select", "merge"):
        sq.run_stage(recipe, work, stage, progress=False)
    return sq.RunDir(work).merge


def qa_variant(run: Path, work: Path, recipe, **finetune) -> Path:
    """QA-SparsePEFT with `finetune` overrides on RUN's sparse INT4 base; returns its merge dir."""
    work.mkdir(parents=True, exist_ok=True)
    for stage in ("sparsify", "quantize"):
        if not sq.RunDir(work).stage(stage).exists():
            shutil.copytree(sq.RunDir(run).stage(stage), sq.RunDir(work).stage(stage))
    variant = build_recipe(recipe.raw, {"finetune": {"mode": "qa-sparsepeft", "lr": None, **finetune}})
    for stage in ("finetune", "select", "merge"):
        sq.run_stage(variant, work, stage, progress=False)
    return sq.RunDir(work).merge


def naive_rtn(merge_dir: Path, masks):
    from sqft_intel.quantization.api import quantize_
    from sqft_intel.quantization.config import Int4Config

    model, tok = sq.load_model(str(merge_dir))
    quantize_(model, Int4Config(method="rtn"), masks=masks, progress=False)
    return model, tok


def nncf_fq_lora(run: Path, recipe, steps: int, lr: float):
    """NNCF FQ_LORA on the sparse FP model, trained like our adapters; returns (model, tok, Q(W+BA))."""
    import nncf
    from nncf.quantization.advanced_parameters import AdvancedCompressionParameters
    from nncf.torch.function_hook.wrapper import get_hook_storage

    from sqft_intel.device import autocast, resolve_precision
    from sqft_intel.finetune.loop import build_examples, collate, end_token_id, epoch_batches

    model, tok = sq.load_model(str(sq.RunDir(run).sparsify))
    example = dict(tok("The capital of France is", return_tensors="pt", return_token_type_ids=False))
    model = nncf.compress_weights(
        model, mode=nncf.CompressWeightsMode.INT4_ASYM, group_size=64, ratio=1.0,
        dataset=nncf.Dataset([example]), compression_format=nncf.CompressionFormat.FQ_LORA,
        advanced_parameters=AdvancedCompressionParameters(lora_adapter_rank=recipe.finetune.adapters.max_rank))
    model.requires_grad_(False)
    hooks = {k: h["0"] for k, h in get_hook_storage(model).post_hooks.items()}
    for h in hooks.values():
        if hasattr(h, "enable_gradients"):
            h.enable_gradients()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr)
    cfg = recipe.finetune.train
    examples = build_examples(tok, recipe.splits.train, cfg.max_length, end_token_id(None, tok))
    batches = epoch_batches([len(e[0]) for e in examples], cfg.batch_size, cfg.seed, 0)
    model.train()
    cpu = torch.device("cpu")
    dtype = resolve_precision(cfg.precision, cpu)  # as our fine-tune: bf16 only where it is fast
    t0 = time.perf_counter()
    for step in range(steps):
        idx = batches[step % len(batches)]
        with autocast(cpu, dtype):  # top-level forward: NNCF's hooks run
            loss = model(**collate([examples[i] for i in idx], tok.pad_token_id)).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if (step + 1) % 25 == 0:
            print(f"nncf fq-lora step {step + 1}: loss {loss.item():.3f}, "
                  f"{(time.perf_counter() - t0) / (step + 1):.1f} s/step", flush=True)
    seconds = time.perf_counter() - t0
    model.eval()
    with torch.no_grad():  # the weights the trained model computes with: Q(W + B·A)
        eff = {}
        for key, h in hooks.items():
            name = key.removesuffix("__0").replace(":", ".")
            eff[name] = h(model.get_submodule(name.removesuffix(".weight")).weight).float()
    # our scorer calls the backbone directly, past NNCF's hooks: score a plain model holding Q(W+BA)
    plain, _ = sq.load_model(str(sq.RunDir(run).sparsify))
    params = dict(plain.named_parameters())
    with torch.no_grad():
        for name, w in eff.items():
            params[name].copy_(w)
    return plain, tok, eff, seconds, str(dtype).removeprefix("torch.")


ROWS = ("qa-sparsepeft-int4-merged", "qa-learned-scales", "qa-fp-base", "qa-fp-base-learned-scales",
        "sparsepeft-fp-merged", "naive-fp-merge-then-rtn", "nncf-fq-lora")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--run", type=Path, required=True, help="a finished default `sqft run` directory")
    ap.add_argument("--work", type=Path, default=None, help="scratch dir (default RUN/../int4-paths)")
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--items", type=int, default=None, help="validation items (default all)")
    ap.add_argument("--nncf-lr", type=float, default=5e-4)
    ap.add_argument("--only", nargs="+", choices=ROWS, default=None,
                    help="measure only these rows; the others are kept from the existing JSON")
    args = ap.parse_args()
    want = set(args.only or ROWS)
    set_threads()
    run = args.run
    work = args.work or run.parent / "int4-paths"
    summary = json.loads((run / "summary.json").read_text())
    recipe = build_recipe(summary["recipe"], {"finetune": {"mode": "sparsepeft", "lr": None,
                                                            "steps": args.steps},
                                              "eval": {"items": args.items}})
    masks = sq.load_masks(sq.RunDir(run).sparsify)
    rows = {}
    if args.only:  # keep the rows not re-measured, each marked with the date it was measured
        old = json.loads((RESULTS / "int4_paths.json").read_text())
        rows = {k: {**r, "measured": r.get("measured", old["date"])} for k, r in old["rows"].items()}

    if "qa-sparsepeft-int4-merged" in want:
        model, tok = sq.load_model(str(sq.RunDir(run).merge))
        rows["qa-sparsepeft-int4-merged"] = evaluate(model, tok, recipe, masks)
        print("qa", rows["qa-sparsepeft-int4-merged"], flush=True)

    for name, finetune in (("qa-learned-scales", {"learn_scales": True}),
                           ("qa-fp-base", {"qa_base": "fp"}),
                           ("qa-fp-base-learned-scales", {"qa_base": "fp", "learn_scales": True})):
        if name not in want:
            continue
        model, tok = sq.load_model(str(qa_variant(run, work / name, recipe, steps=args.steps, **finetune)))
        rows[name] = evaluate(model, tok, recipe, masks)
        print(name, rows[name], flush=True)

    if want & {"sparsepeft-fp-merged", "naive-fp-merge-then-rtn"}:
        fp_merge = fp_sparsepeft(run, work / "sparsepeft", recipe)
        model, tok = sq.load_model(str(fp_merge))
        rows["sparsepeft-fp-merged"] = evaluate(model, tok, recipe, masks)
        print("fp", rows["sparsepeft-fp-merged"], flush=True)

        model, tok = naive_rtn(fp_merge, masks)
        with torch.no_grad():
            eff = {f"{f}.weight": m.dequantized_weight() for f, m in model.named_modules()
                   if hasattr(m, "dequantized_weight")}
        rows["naive-fp-merge-then-rtn"] = evaluate(model, tok, recipe, masks, eff)
        print("naive", rows["naive-fp-merge-then-rtn"], flush=True)

    if "nncf-fq-lora" in want:
        model, tok, eff, seconds, dtype = nncf_fq_lora(run, recipe, args.steps, args.nncf_lr)
        rows["nncf-fq-lora"] = {**evaluate(model, tok, recipe, masks, eff), "train_seconds": seconds,
                                "lr": args.nncf_lr, "train_precision": dtype}
        print("nncf", rows["nncf-fq-lora"], flush=True)
    for name in want:
        rows[name].pop("measured", None)

    print(f"\n{'path':<28} {'precision':<10} {'sparsity':>9} {'new nonzeros':>13} {'acc':>7} "
          f"{'acc_norm':>9} {'held-out acc':>13}")
    for name, r in rows.items():
        r["precision"] = "fp32" if name == "sparsepeft-fp-merged" else (
            "INT4 (FQ)" if name == "nncf-fq-lora" else "INT4")
        print(f"{name:<28} {r['precision']:<10} {r['sparsity']:>9.1%} {r['new_nonzeros']:>13} "
              f"{r['acc']:>7.1%} {r['acc_norm']:>9.1%} {r['holdout_acc']:>13.1%}")
    path = write_result("int4_paths", {
        "command": "python benchmarks/int4_paths.py " + " ".join(sys.argv[1:]),
        "task": recipe.data.task, "items": len(recipe.splits.eval),
        "holdout_items": len(recipe.splits.holdout), "steps": args.steps,
        "base": "50% Wanda SmolLM2-135M; INT4 asym g64", "rows": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
