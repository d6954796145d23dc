"""Training step time and peak memory: stock PEFT LoRA, our NLS LoRA / SparsePEFT / QA-SparsePEFT
(straightforward and memory-efficient) and NNCF's FQ_LORA_NLS, same model, rank, batch and targets.

Every configuration runs in its own subprocess (so its peak RSS is its own), and configurations
are interleaved round by round (this machine is noisy: runs minutes apart differ by 15-25 %).
Ratios are against stock PEFT LoRA with bf16 autocast measured in the same run.

Usage: python benchmarks/train_speed.py [--quick] [--configs ...] [--name NAME]
  --quick: batch 2x128, one round of 2 steps (under 5 minutes on 2 cores); prints the ratios.
Writes benchmarks/results/train_speed.json (train_speed_quick.json with --quick).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

CONFIGS = {
    # name: (implementation, mode, autocast bf16, rank space, adapter dropout[, memory-efficient])
    # sqft configs without the 6th element use the default (plain autograd)
    "peft-lora-fp32": ("peft", "lora", False, (32,), 0.0),
    "peft-lora-bf16": ("peft", "lora", True, (32,), 0.0),
    "sqft-lora-r32-bf16": ("sqft", "lora", True, (32,), 0.0),  # same math as PEFT: overhead check
    "sqft-nls-lora-bf16": ("sqft", "lora", True, (32, 24, 16), 0.0),
    "sqft-sparsepeft-bf16": ("sqft", "sparsepeft", True, (32, 24, 16), 0.0),
    "sqft-sparsepeft-memeff-bf16": ("sqft", "sparsepeft", True, (32, 24, 16), 0.0, True),
    # with adapter dropout SparsePEFT needs the straightforward two-matmul path
    "sqft-sparsepeft-dropout-bf16": ("sqft", "sparsepeft", True, (32, 24, 16), 0.05),
    "sqft-sparsepeft-fp32": ("sqft", "sparsepeft", False, (32, 24, 16), 0.0),
    # on an INT4 (RTN g64) base: fake quantization on the base's grid every forward
    "sqft-qa-sparsepeft-bf16": ("sqft", "qa-sparsepeft", True, (32, 24, 16), 0.0),
    "sqft-qa-sparsepeft-memeff-bf16": ("sqft", "qa-sparsepeft", True, (32, 24, 16), 0.0, True),
    # NNCF's peer: INT4 fake quantization (trainable ranges) + elastic LoRA on every quantizer,
    # one rank drawn per step as in its NLS examples
    "nncf-fq-lora-nls-bf16": ("nncf", "fq-lora-nls", True, (32, 24, 16), 0.0),
}
BASELINE = "peft-lora-bf16"
TARGETS = ("q_proj", "k_proj", "v_proj", "up_proj", "down_proj")


def _int4(lin):
    """RTN INT4 (asym, group 64) of a Linear: the QA base (step cost does not depend on GPTQ)."""
    from sqft_intel.quantization.int4 import group_params, quantize
    from sqft_intel.quantization.modules import Int4Linear

    s, z = group_params(lin.weight, 64, sym=False)
    return Int4Linear.from_quantized(quantize(lin.weight, s, z), s, z, lin.bias)


def _nncf_fq_lora_nls(model, ranks):
    """NNCF FQ_LORA_NLS (INT4 asym g64) on the targets only; returns (model, per-step sampler)."""
    import random

    import nncf
    import torch
    from nncf.quantization.advanced_parameters import AdvancedCompressionParameters
    from nncf.torch.function_hook.wrapper import get_hook_storage

    ids = torch.randint(1000, 40000, (1, 16), generator=torch.Generator().manual_seed(2))
    others = [f for f, m in model.named_modules() if isinstance(m, torch.nn.Linear)
              and f.rsplit(".", 1)[-1] not in TARGETS]
    model = nncf.compress_weights(
        model, mode=nncf.CompressWeightsMode.INT4_ASYM, group_size=64, ratio=1.0,
        dataset=nncf.Dataset([{"input_ids": ids, "attention_mask": torch.ones_like(ids)}]),
        compression_format=nncf.CompressionFormat.FQ_LORA_NLS,
        ignored_scope=nncf.IgnoredScope(names=[f"{f}.weight" for f in others], validate=False),
        advanced_parameters=AdvancedCompressionParameters(lora_adapter_rank=ranks[0]))
    model.requires_grad_(False)
    quantizers = [h["0"] for h in get_hook_storage(model).post_hooks.values()]
    for q in quantizers:
        if hasattr(q, "enable_gradients"):
            q.enable_gradients()
    elastic = [q for q in quantizers if hasattr(q, "set_active_rank")]
    rng = random.Random(0)
    return model, lambda: [q.set_active_rank(rng.choice(ranks)) for q in elastic]


def child(name: str, batch: int, seq: int, warmup: int, steps: int, profile_top: int = 0) -> dict:
    import torch

    import sqft_intel as sq
    from sqft_intel.device import set_threads
    from sqft_intel.lm_head import answer_loss
    from sqft_intel.sparsity.wanda import row_mask
    from sqft_intel.targets import replace_module

    set_threads()
    impl, mode, bf16, ranks, dropout, *rest = CONFIGS[name]
    efficient = rest[0] if rest else False
    model, _ = sq.load_model("smollm2-135m")
    torch.manual_seed(0)
    if impl == "nncf":
        model, sample = _nncf_fq_lora_nls(model, ranks)
    elif impl == "peft":
        from peft import LoraConfig, get_peft_model

        peft = get_peft_model(model, LoraConfig(r=32, lora_alpha=64, lora_dropout=dropout,
                                                target_modules=list(TARGETS)))
        model = peft.base_model.model
        sample = None
    else:
        masks = {}
        with torch.no_grad():  # a 50 % magnitude mask: the step cost does not depend on which
            for fqn, mod in list(model.named_modules()):
                if type(mod) is torch.nn.Linear and fqn.rsplit(".", 1)[-1] in TARGETS:
                    keep = row_mask(mod.weight.abs(), 0.5)
                    mod.weight.mul_(keep)
                    masks[f"{fqn}.weight"] = keep
                    if mode == "qa-sparsepeft":
                        replace_module(model, fqn, _int4(mod))
        sq.add_adapters_(model, sq.NLSConfig(mode=mode, rank_space=ranks, alpha=64.0,
                                             dropout=dropout, target_modules=TARGETS,
                                             elastic_modules=("q_proj", "k_proj", "v_proj"),
                                             memory_efficient=efficient,
                                             qa_base="dequantized",  # same step cost as fp
                                             learn_scales=False),  # as train_speed.json measured
                         masks=masks)
        gen = torch.Generator().manual_seed(0)
        sample = lambda: sq.sample_ranks_(model, gen)  # noqa: E731
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    ids = torch.randint(1000, 40000, (batch, seq), generator=torch.Generator().manual_seed(1))
    attn = torch.ones_like(ids)
    def step():
        if sample:
            sample()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            if impl == "nncf":  # NNCF's hooks run in the wrapped top-level forward only
                loss = model(input_ids=ids, attention_mask=attn, labels=ids).loss
            else:  # every position labelled: the same logits as the HF loss
                loss = answer_loss(model, ids, attn, ids)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        step()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    profile = None
    if profile_top:
        from torch.profiler import ProfilerActivity
        from torch.profiler import profile as torch_profile

        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            step()
        profile = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=profile_top)
    return {"name": name, "step_seconds": times, "profile": profile,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "trainable_params": sum(p.numel() for p in params)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="batch 2x128, 1 round of 2 steps")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=list(CONFIGS),
                    help="a subset (the baseline is always included)")
    ap.add_argument("--profile", metavar="CONFIG", choices=list(CONFIGS), default=None,
                    help="print where one step of CONFIG spends its time (torch.profiler), no run")
    ap.add_argument("--name", default="train_speed", help="results file stem (default train_speed)")
    args = ap.parse_args()
    if args.quick:
        args.batch, args.seq, args.rounds, args.steps = 2, 128, 1, 2
    if args.child:
        print(json.dumps(child(args.child, args.batch, args.seq, args.warmup, args.steps)))
        return
    if args.profile:
        res = child(args.profile, args.batch, args.seq, args.warmup, 1, profile_top=25)
        print(f"{args.profile}: {res['step_seconds'][0]:.2f} s/step\n{res['profile']}")
        return
    from _common import write_result

    names = [BASELINE] + [n for n in args.configs if n != BASELINE]
    runs: dict[str, list[dict]] = {n: [] for n in names}
    for r in range(args.rounds):
        for name in names:  # interleaved: every config once per round
            cmd = [sys.executable, __file__, "--child", name, "--batch", str(args.batch),
                   "--seq", str(args.seq), "--steps", str(args.steps), "--warmup", str(args.warmup)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True)
            res = json.loads(out.stdout.strip().splitlines()[-1])
            runs[name].append(res)
            print(f"round {r + 1} {name:>22}: {statistics.median(res['step_seconds']):.2f} s/step, "
                  f"peak RSS {res['peak_rss_mb']:.0f} MB", flush=True)
    rows = []
    for name, rs in runs.items():
        steps = [t for res in rs for t in res["step_seconds"]]
        rows.append({"config": name, "step_seconds_median": statistics.median(steps),
                     "peak_rss_mb": max(res["peak_rss_mb"] for res in rs),
                     "trainable_params": rs[0]["trainable_params"], "step_seconds": steps})
    base = next(r for r in rows if r["config"] == BASELINE)
    print(f"\n{'config':>22} {'s/step':>8} {'x ' + BASELINE:>20} {'peak RSS MB':>12}")
    for r in rows:
        r["ratio_to_baseline"] = r["step_seconds_median"] / base["step_seconds_median"]
        r["rss_ratio_to_baseline"] = r["peak_rss_mb"] / base["peak_rss_mb"]
        print(f"{r['config']:>22} {r['step_seconds_median']:>8.2f} {r['ratio_to_baseline']:>20.2f} "
              f"{r['peak_rss_mb']:>12.0f}")
    path = write_result(f"{args.name}_quick" if args.quick else args.name, {
        "model": "smollm2-135m", "batch": args.batch, "seq": args.seq, "rank": 32,
        "targets": list(TARGETS), "rounds": args.rounds, "steps_per_round": args.steps,
        "baseline": BASELINE, "rows": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
