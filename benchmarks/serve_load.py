"""Serving under load: the serialized server vs continuous batching, same export, same prompts.

Both servers run as subprocesses on 127.0.0.1, one after the other, on the same export:
  serial    deploy/serial_server.py: one LLMPipeline behind a lock (the server before issue #16)
  batching  deploy/server.py: a ContinuousBatchingPipeline behind Starlette + uvicorn
At each concurrency level (1, 4, 16 clients) every client sends R streamed completion requests
(deploy/load_test.py: the same prompts in the same order for both servers, greedy, `max_tokens`
new tokens at most), after a warm-up. Reported per level: requests/s, generated tokens/s (the
servers' own usage counts), p50/p99 latency, p50/p99 time to first token, errors. Then a bounded
fault soak on the batching server (deploy/soak.py): dropped streams and requests, malformed and
oversize bodies, bursts over the queue, with the server's RSS sampled from /proc.

Goals (issue #16): at 16 clients >= 3x the serialized server's generated tokens/s with 0 errors;
single-client latency (p50) no worse than 10%; the soak passes.

Usage: python benchmarks/serve_load.py --export runs/smollm2-135m-arc_easy [--quick] [--out FILE]
  --quick: 2 requests per client, 8 new tokens, a 5 s soak (a smoke run; the tests use it).
Writes benchmarks/results/serve_load.json (serve_load_quick.json with --quick) unless --out.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT))

from _common import RESULTS, machine  # noqa: E402

from deploy.load_test import ServerProcess, run_load  # noqa: E402
from deploy.soak import run_soak  # noqa: E402

SERVERS = {"serial": "deploy.serial_server", "batching": "deploy.server"}


def measure(name: str, export: Path, clients: list[int], requests: int, max_tokens: int,
            queue_size: int) -> dict:
    """One server's levels: start it, warm it up, run every level, stop it."""
    server = ServerProcess(SERVERS[name], export, "--queue-size", str(queue_size))
    try:
        rss_start = server.rss_kib() / 1024
        run_load(server.url, 1, 2, max_tokens)  # compile and cache the shapes of a lone request
        run_load(server.url, max(clients), 1, max_tokens)  # ... and of a full batch
        levels = []
        for n in clients:
            result = run_load(server.url, n, requests, max_tokens)
            result["server_rss_mib"] = server.rss_kib() / 1024
            levels.append(result)
            print(f"{name:8s} {n:3d} clients: {result['requests_per_second']:7.2f} req/s "
                  f"{result['generated_tokens_per_second']:8.1f} tok/s  latency p50 "
                  f"{result['latency_p50_s']:.3f} s p99 {result['latency_p99_s']:.3f} s  ttft p50 "
                  f"{result['ttft_p50_s']:.3f} s  errors {result['errors']}", flush=True)
        return {"module": SERVERS[name], "rss_start_mib": rss_start, "levels": levels}
    finally:
        server.stop()


def soak(export: Path, seconds: float, queue_size: int, max_tokens: int) -> dict:
    server = ServerProcess(SERVERS["batching"], export, "--queue-size", str(queue_size), "--no-access-log")
    try:
        run_load(server.url, 2, 2, max_tokens)  # warm
        result = run_soak(server.url, seconds, pid=server.pid, max_tokens=max_tokens)
        result["server_alive"] = server.alive()
        result["passed"] = result["passed"] and result["server_alive"]
        print(f"soak {seconds:.0f} s: passed={result['passed']} unexpected={result['unexpected']} "
              f"503s={result['burst_503']} (slowest {result['max_503_seconds']:.3f} s) "
              f"rss growth {result.get('rss_growth_mib', float('nan')):.1f} MiB", flush=True)
        return result
    finally:
        server.stop()


def summarize(serial: dict, batching: dict, soak_result: dict | None) -> dict:
    s_lo, s_hi = serial["levels"][0], serial["levels"][-1]
    b_lo, b_hi = batching["levels"][0], batching["levels"][-1]
    speedup = b_hi["generated_tokens_per_second"] / s_hi["generated_tokens_per_second"]
    latency_ratio = b_lo["latency_p50_s"] / s_lo["latency_p50_s"]
    errors = sum(r["errors"] for r in serial["levels"] + batching["levels"])
    return {
        "most_clients": b_hi["clients"], "fewest_clients": b_lo["clients"],
        "tokens_per_second_speedup_at_most_clients": speedup,
        "latency_p50_ratio_at_fewest_clients": latency_ratio,
        "errors": errors,
        "goals": {"tokens_per_second_3x_at_16_clients": b_hi["clients"] == 16 and speedup >= 3.0,
                  "zero_errors": errors == 0,
                  "single_client_latency_within_10pct": b_lo["clients"] == 1 and latency_ratio <= 1.10,
                  "soak_passed": soak_result is not None and soak_result["passed"]},
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--export", type=Path, required=True, help="an export dir or a run dir holding openvino/")
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--requests", type=int, default=None, help="per client and level (default 16; quick 2)")
    ap.add_argument("--max-tokens", type=int, default=None, help="new tokens per request (32; quick 8)")
    ap.add_argument("--queue-size", type=int, default=32, help="both servers' --queue-size")
    ap.add_argument("--soak-seconds", type=float, default=None, help="default 120 (quick 5); 0 skips it")
    ap.add_argument("--soak-queue-size", type=int, default=8, help="small, so the soak's bursts exceed it")
    ap.add_argument("--quick", action="store_true", help="a smoke run: 2 requests, 8 tokens, 5 s soak")
    ap.add_argument("--out", type=Path, default=None, help="results JSON (default: benchmarks/results/)")
    args = ap.parse_args(argv)
    from sqft_intel import export_dir_of

    export = export_dir_of(args.export)
    requests = args.requests or (2 if args.quick else 16)
    max_tokens = args.max_tokens or (8 if args.quick else 32)
    soak_seconds = args.soak_seconds if args.soak_seconds is not None else (5 if args.quick else 120)
    clients = sorted(set(args.clients))
    queue_size = max(args.queue_size, max(clients))
    t0 = time.time()
    serial = measure("serial", export, clients, requests, max_tokens, queue_size)
    batching = measure("batching", export, clients, requests, max_tokens, queue_size)
    soak_result = soak(export, soak_seconds, args.soak_queue_size, max_tokens) if soak_seconds > 0 else None
    summary = summarize(serial, batching, soak_result)
    used = sys.argv[1:] if argv is None else argv
    record = {"benchmark": "serve_load", "date": time.strftime("%Y-%m-%d"), "machine": machine(),
              "command": "python benchmarks/serve_load.py " + " ".join(used),
              "export": str(export), "quick": args.quick, "wall_seconds": None,
              "settings": {"clients": clients, "requests_per_client": requests, "max_tokens": max_tokens,
                           "queue_size": queue_size, "stream": True, "soak_seconds": soak_seconds,
                           "soak_queue_size": args.soak_queue_size,
                           "batching_server": "deploy.server defaults (deploy/engine.py EngineConfig)",
                           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")},
              "summary": summary, "serial": serial, "batching": batching, "soak": soak_result}
    record["wall_seconds"] = time.time() - t0
    out = args.out or RESULTS / ("serve_load_quick.json" if args.quick else "serve_load.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(tmp, out)
    g = summary["goals"]
    print(f"generated tokens/s at {summary['most_clients']} clients: "
          f"x{summary['tokens_per_second_speedup_at_most_clients']:.2f} the serialized server "
          f"(goal >= 3 at 16: {g['tokens_per_second_3x_at_16_clients']}); latency p50 at "
          f"{summary['fewest_clients']} client(s): x{summary['latency_p50_ratio_at_fewest_clients']:.2f} "
          f"(goal <= 1.10 at 1: {g['single_client_latency_within_10pct']}); errors {summary['errors']}; "
          f"soak passed: {g['soak_passed']}")
    print(f"wrote {out}")
    return 0 if summary["errors"] == 0 and (soak_result is None or soak_result["passed"]) else 1


if __name__ == "__main__":
    sys.exit(main())
