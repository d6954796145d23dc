"""Wall time of Wanda (unstructured 50 % and 2:4) on the bundled SmolLM2-135M.

Usage: python benchmarks/wanda_time.py [--quick]
Writes benchmarks/results/wanda_time.json.
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
from sqft_intel.recipe import build_recipe  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="16 calibration samples, 1 repeat")
    args = ap.parse_args()
    set_threads()
    samples, repeats = (16, 1) if args.quick else (64, 3)
    recipe = build_recipe({"sparsify": {"calib_samples": samples}})
    model, tok = sq.load_model("smollm2-135m")
    calib = recipe.splits.calibration_ids(tok, recipe.sparsify)
    rows = []
    for label, cfg in [("unstructured 50%", sq.SparsityConfig(sparsity=0.5)),
                       ("2:4", sq.SparsityConfig(nm=(2, 4)))]:
        times = []
        for _ in range(repeats):
            m = copy.deepcopy(model)
            t0 = time.perf_counter()
            with torch.no_grad():
                sq.sparsify_(m, cfg, calib=calib, progress=False)
            times.append(time.perf_counter() - t0)
        rows.append({"config": label, "seconds_median": statistics.median(times),
                     "seconds": times})
        print(f"{label:>18}: {statistics.median(times):.1f} s (median of {repeats})")
    path = write_result("wanda_time", {
        "model": "smollm2-135m", "calib_samples": samples, "calib_seq_len": 128,
        "layers": 210, "quick": args.quick, "rows": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
