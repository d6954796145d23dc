"""Per-layer output error of INT4 RTN vs mask-aware GPTQ on the 50 %-sparse bundled model.

Error of layer W on calibration inputs X: ‖X (Q(W) - W)ᵀ‖_F / ‖X Wᵀ‖_F, computed from H = XᵀX of
held-out calibration text (a different seed than GPTQ's) through the unquantized sparse model.
Both methods must keep every pruned zero (checked here too).

Usage: python benchmarks/int4_error.py [--quick]
Writes benchmarks/results/int4_error.json.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from _common import write_result  # noqa: E402

import sqft_intel as sq  # noqa: E402
from sqft_intel.device import set_threads  # noqa: E402
from sqft_intel.quantization.api import quantize_  # noqa: E402
from sqft_intel.quantization.config import Int4Config  # noqa: E402
from sqft_intel.quantization.modules import Int4Linear  # noqa: E402
from sqft_intel.recipe import build_recipe  # noqa: E402
from sqft_intel.sparsity.calibrate import input_hessians  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="16 calibration samples")
    ap.add_argument("--group-size", type=int, default=64)
    args = ap.parse_args()
    set_threads()
    n = 16 if args.quick else 64
    model, tok = sq.load_model("smollm2-135m")
    recipe = build_recipe({"sparsify": {"calib_samples": n}})
    calib = recipe.splits.calibration_ids(tok, recipe.sparsify)
    res = sq.sparsify_(model, recipe.sparsify, calib=calib, progress=False)
    held_out = recipe.splits.calibration_ids(tok, build_recipe(
        {"quantize": {"calib_samples": n, "seed": 1}}).quantize)
    targets = {f: m for f, m in model.named_modules()
               if isinstance(m, torch.nn.Linear) and f"{f}.weight" in res.masks}
    hess = input_hessians(targets)
    with torch.no_grad():
        for chunk in held_out.split(8):
            model(input_ids=chunk)
    hess.remove()
    W = {f: m.weight.detach().clone() for f, m in targets.items()}
    rows = {}
    for method in ("rtn", "gptq"):
        m = copy.deepcopy(model)
        t0 = time.perf_counter()
        q = quantize_(m, Int4Config(method=method, group_size=args.group_size, calib_samples=n),
                      masks=res.masks, calib=calib, progress=False)
        seconds = time.perf_counter() - t0
        errs = {}
        for f, mod in m.named_modules():
            if isinstance(mod, Int4Linear):
                d, H = mod.dequantized_weight() - W[f], hess.sums[f]
                errs[f] = float(((d @ H) * d).sum().sqrt() / ((W[f] @ H) * W[f]).sum().sqrt())
        rows[method] = {"seconds": seconds, "new_nonzeros": q.metrics()["total_new_nonzeros"],
                        "mean_output_error": statistics.mean(errs.values()),
                        "median_output_error": statistics.median(errs.values()),
                        "per_layer_output_error": errs}
        print(f"{method:>5}: mean rel. output error {rows[method]['mean_output_error']:.4f}, "
              f"median {rows[method]['median_output_error']:.4f}, new nonzeros "
              f"{rows[method]['new_nonzeros']}, {seconds:.1f} s")
    wins = sum(rows["gptq"]["per_layer_output_error"][f] < rows["rtn"]["per_layer_output_error"][f]
               for f in targets)
    print(f"gptq below rtn on {wins}/{len(targets)} layers")
    path = write_result("int4_error_quick" if args.quick else "int4_error", {
        "model": "smollm2-135m", "sparsity": 0.5, "group_size": args.group_size, "calib_samples": n,
        "gptq_better_layers": wins, "layers": len(targets), "rows": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
