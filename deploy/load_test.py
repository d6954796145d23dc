"""Load test for deploy/server.py: C concurrent clients x R requests each on one server.

    python -m deploy.load_test --url http://127.0.0.1:8000 --clients 16 --requests 200
    python -m deploy.load_test --export runs/exp1/openvino   # starts its own loopback server

Prints errors, throughput and p50/p99 latency; `--out FILE` writes them as JSON.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlparse


def one_client(url: str, n: int, max_tokens: int, key: str | None, lat: list, errors: list) -> None:
    u = urlparse(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=120)
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    for i in range(n):
        body = json.dumps({"prompt": f"Question: what is {i} plus {i}?\nAnswer:",
                           "max_tokens": max_tokens})
        t0 = time.perf_counter()
        try:
            conn.request("POST", "/v1/completions", body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            if resp.status != 200 or "choices" not in json.loads(data):
                errors.append(f"{resp.status}: {data[:200]!r}")
        except (OSError, http.client.HTTPException, ValueError) as e:
            errors.append(f"{type(e).__name__}: {e}")
            conn.close()
            conn = http.client.HTTPConnection(u.hostname, u.port, timeout=120)
        lat.append(time.perf_counter() - t0)
    conn.close()


def run_load(url: str, clients: int, requests: int, max_tokens: int, key: str | None = None) -> dict:
    lat: list[float] = []
    errors: list[str] = []
    threads = [threading.Thread(target=one_client, args=(url, requests, max_tokens, key, lat, errors))
               for _ in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    q = statistics.quantiles(lat, n=100) if len(lat) > 1 else lat * 99
    return {"clients": clients, "requests_per_client": requests, "max_tokens": max_tokens,
            "total_requests": len(lat), "errors": len(errors), "error_samples": errors[:5],
            "wall_seconds": wall, "requests_per_second": len(lat) / wall,
            "latency_p50_s": q[49], "latency_p99_s": q[98], "latency_max_s": max(lat)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m deploy.load_test", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default=None, help="a running server")
    ap.add_argument("--export", type=Path, default=None, help="start a loopback server on this export")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--max-tokens", type=int, default=8)
    ap.add_argument("--out", type=Path, default=None, help="write the result as JSON here")
    args = ap.parse_args(argv)
    server = None
    if args.export is not None:
        from deploy.server import ServerConfig, make_server

        server = make_server(args.export, ServerConfig(port=0, queue_size=max(32, args.clients)))
        threading.Thread(target=server.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{server.server_address[1]}"
    elif args.url:
        url = args.url
    else:
        ap.error("give --url of a running server or --export to start one")
    result = run_load(url, args.clients, args.requests, args.max_tokens)
    if server is not None:
        server.shutdown()
        result["export"] = str(args.export)
    used = sys.argv[1:] if argv is None else argv
    result.update({"date": time.strftime("%Y-%m-%d"), "cpu_count": os.cpu_count(),
                   "command": "python -m deploy.load_test " + " ".join(used)})
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if result["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
