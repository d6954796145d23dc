"""Do OpenVINO's sparse-weight CPU kernels help our sparse model? W8A8 export, two compilations.

The `sparse-int8` export of RUN/merge is compiled twice on the CPU plugin: with
CPU_SPARSE_WEIGHTS_DECOMPRESSION_RATE (layers at least that sparse may use sparse int8 kernels) and
without it (dense int8 kernels on the very same IR: the dense W8A8 baseline). Reported: the
FullyConnected primitive types the plugin chose in each, and prefill / per-token decode latency.
Sparse kernels exist for AMX only (`brgemm_avx512_amx_sparse_i8`); elsewhere both runs are dense.

Usage: python benchmarks/sparse_int8.py --run runs/smollm2-135m-arc_easy [--rate 0.5]
Writes benchmarks/results/sparse_int8.json.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import write_result  # noqa: E402

import sqft_intel as sq  # noqa: E402
from sqft_intel.data import calibration_texts, load_train_items  # noqa: E402
from sqft_intel.device import set_threads  # noqa: E402
from sqft_intel.export.api import export_  # noqa: E402
from sqft_intel.export.config import MODEL_XML, ExportConfig  # noqa: E402
from sqft_intel.export.sparse_int8 import SPARSE_RATE_KEY, measure_latency  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--run", type=Path, required=True, help="a finished `sqft run` directory")
    ap.add_argument("--rate", type=float, default=0.5)
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--decode-steps", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    set_threads()
    out = args.run.parent / "sparse-int8-bench"
    if not (out / MODEL_XML).is_file():
        shutil.rmtree(out, ignore_errors=True)
        texts = calibration_texts(load_train_items("arc_easy"))[:64]
        export_(sq.RunDir(args.run).merge, out, ExportConfig(format="sparse-int8", sparse_rate=args.rate),
                calib_texts=texts)
    kw = {"prompt_len": args.prompt_len, "decode_steps": args.decode_steps, "repeats": args.repeats}
    rows = {}
    for round_ in range(2):  # interleaved: dense, sparse, dense, sparse
        for name, props in (("dense-int8-kernels", {}), ("sparse-rate", {SPARSE_RATE_KEY: args.rate})):
            r = measure_latency(out / MODEL_XML, props, **kw)
            rows.setdefault(name, []).append(r)
            print(f"round {round_ + 1} {name}: prefill {r['prefill_s'] * 1e3:.1f} ms, decode "
                  f"{r['decode_token_s'] * 1e3:.2f} ms/token, primitives {r['primitives']}", flush=True)
    best = {n: {"prefill_s": min(r["prefill_s"] for r in rs),
                "decode_token_s": min(r["decode_token_s"] for r in rs),
                "primitives": rs[-1]["primitives"]} for n, rs in rows.items()}
    d, s = best["dense-int8-kernels"], best["sparse-rate"]
    result = {"rate": args.rate, "prompt_len": args.prompt_len, "decode_steps": args.decode_steps,
              "rows": best, "runs": rows,
              "sparse_primitive_used": any("sparse" in p for p in s["primitives"]),
              "prefill_speedup": d["prefill_s"] / s["prefill_s"],
              "decode_speedup": d["decode_token_s"] / s["decode_token_s"]}
    print(f"sparse kernels used: {result['sparse_primitive_used']}; "
          f"prefill x{result['prefill_speedup']:.2f}, decode x{result['decode_speedup']:.2f} "
          "(dense W8A8 kernels = 1)")
    print(f"wrote {write_result('sparse_int8', result)}")


if __name__ == "__main__":
    main()
