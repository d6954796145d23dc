"""A bounded fault soak for deploy/server.py: for a fixed time, clients that behave and clients
that do not, while the server's memory is sampled from /proc.

    python -m deploy.soak --url http://127.0.0.1:8000 --pid 12345 --seconds 120

Each worker cycles through these faults (loopback only, every loop bounded by `seconds`):
  stream, plain     well-behaved requests: 200 with a complete answer, or a clean 503 when full
  drop_stream       reads the first event of a stream, then closes the socket
  drop_plain        sends a request and closes the socket without reading the answer
  malformed         invalid JSON: expects 400 with a JSON error
  oversize          a body over the 64 KiB limit: expects 413 with a JSON error, unread
  burst             twice the queue's capacity at once (read from /metrics): 200s and 503s only,
                    the 503s at once
Pass: no unexpected outcome (every admitted request got an answer or a clean JSON error), the
server is alive and healthy afterwards, its queue drains to 0 (dropped clients freed their
sequences), and its resident memory after warm-up grows by less than `rss_growth_limit_mib`.
"""

from __future__ import annotations

import argparse
import collections
import http.client
import json
import os
import socket
import statistics
import sys
import threading
import time
from urllib.parse import urlparse

from deploy.load_test import PROMPTS, read_events, rss_kib

FAULTS = ("stream", "drop_stream", "plain", "malformed", "drop_plain", "oversize", "burst")


class _Client:
    def __init__(self, url: str, key: str | None, timeout: float = 120):
        u = urlparse(url)
        self.host, self.port, self.key, self.timeout = u.hostname, u.port, key, timeout

    def conn(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)

    def headers(self) -> dict:
        return {"Content-Type": "application/json",
                **({"Authorization": f"Bearer {self.key}"} if self.key else {})}

    def get(self, path: str) -> tuple[int, bytes]:
        conn = self.conn()
        try:
            conn.request("GET", path, headers=self.headers())
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def post(self, body: bytes) -> tuple[int, bytes]:
        conn = self.conn()
        try:
            conn.request("POST", "/v1/completions", body=body, headers=self.headers())
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()


def _json_error(status: int, data: bytes, expected: tuple[int, ...]) -> str | None:
    """None if `data` is our JSON error with one of the expected statuses, else what is wrong."""
    if status not in expected:
        return f"status {status} (expected {expected}): {data[:160]!r}"
    try:
        err = json.loads(data)["error"]
        assert err["code"] == status and err["message"]
    except (ValueError, KeyError, TypeError, AssertionError):
        return f"{status} without a JSON error: {data[:160]!r}"
    return None


def _completion(i: int, max_tokens: int, **extra) -> bytes:
    return json.dumps({"prompt": PROMPTS[i % len(PROMPTS)], "max_tokens": max_tokens, **extra}).encode()


def _fault(client: _Client, fault: str, i: int, max_tokens: int, capacity: int, stats: dict) -> str | None:
    """Run one fault; None if the server behaved, else a description of what went wrong."""
    if fault == "plain":
        status, data = client.post(_completion(i, max_tokens))
        if status == 200:
            out = json.loads(data)
            ok = out["choices"][0]["finish_reason"] in ("stop", "length")
            return None if ok and out["usage"]["completion_tokens"] > 0 else f"bad answer {data[:160]!r}"
        return _json_error(status, data, (503,))
    if fault in ("stream", "drop_stream"):
        conn = client.conn()
        try:
            conn.request("POST", "/v1/completions", headers=client.headers(),
                         body=_completion(i, max_tokens, stream=True))
            resp = conn.getresponse()
            if resp.status != 200:
                return _json_error(resp.status, resp.read(), (503,))
            if fault == "drop_stream":
                resp.readline()  # the first event's line, then hang up mid-stream
                return None
            events = read_events(resp)
            resp.read()
            if not events or events[-1] != "[DONE]" or any("error" in e for e in events[:-1]):
                return f"incomplete stream: {events[-2:]!r:.160}"
            return None
        finally:
            conn.close()
    if fault == "drop_plain":
        with socket.create_connection((client.host, client.port), timeout=10) as s:
            body = _completion(i, max_tokens)
            head = "".join(f"{k}: {v}\r\n" for k, v in client.headers().items())
            s.sendall(f"POST /v1/completions HTTP/1.1\r\nHost: x\r\n{head}Content-Length: {len(body)}"
                      "\r\n\r\n".encode() + body)
        return None
    if fault == "malformed":
        status, data = client.post(b'{"prompt": "the sun", "max_tokens": ')
        return _json_error(status, data, (400,))
    if fault == "oversize":
        status, data = client.post(json.dumps({"prompt": "x" * 70_000}).encode())
        return _json_error(status, data, (413,))
    if fault == "burst":  # twice the capacity at once, long enough answers to overlap
        n = 2 * capacity
        barrier = threading.Barrier(n)
        results: list[tuple[int, bytes, float]] = []

        def one(j):
            barrier.wait()
            t0 = time.perf_counter()
            status, data = client.post(_completion(i + j, 4 * max_tokens))
            results.append((status, data, time.perf_counter() - t0))

        threads = [threading.Thread(target=one, args=(j,)) for j in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        rejected = [r for r in results if r[0] == 503]
        stats["burst_503"] += len(rejected)
        stats["burst_200"] += sum(r[0] == 200 for r in results)
        stats["max_503_seconds"] = max([stats["max_503_seconds"], *(r[2] for r in rejected)])
        bad = [_json_error(s, d, (503,)) for s, d, _ in results if s != 200]
        return next((b for b in bad if b), None)
    raise ValueError(f"unknown fault {fault!r}")


def _metric(client: _Client, name: str) -> float | None:
    status, data = client.get("/metrics")
    if status != 200:
        return None
    for line in data.decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


MIN_SECONDS_FOR_RSS = 20.0  # shorter soaks end while caches still fill: memory is not judged


def run_soak(url: str, seconds: float, *, pid: int | None = None, key: str | None = None,
             workers: int = 4, max_tokens: int = 16, rss_growth_limit_mib: float = 64.0,
             warmup_fraction: float = 0.4) -> dict:
    """Soak a running deploy.server for `seconds`; the outcome as a dict (`passed` says it all).

    Memory: RSS is sampled every 0.5 s; the first `warmup_fraction` of the time is warm-up (the
    CPU plugin's shape cache and the KV cache fill up to what the traffic needs, both bounded);
    after it, the median of the last quarter of the samples minus that of the first quarter must
    stay under `rss_growth_limit_mib`. Soaks shorter than 20 s report memory without judging it.
    """
    client = _Client(url, key)
    capacity = int(_metric(client, "sqft_queue_capacity") or 4)
    deadline = time.monotonic() + seconds
    counts = {f: collections.Counter() for f in FAULTS}
    problems: list[str] = []
    stats = {"burst_503": 0, "burst_200": 0, "max_503_seconds": 0.0}
    lock = threading.Lock()
    rss: list[tuple[float, int]] = []
    t_start = time.monotonic()

    def sample():
        while time.monotonic() < deadline and pid is not None:
            try:
                rss.append((time.monotonic() - t_start, rss_kib(pid)))
            except (OSError, StopIteration):
                return  # the process is gone: reported below
            time.sleep(0.5)

    def work(w: int):
        i = w
        while time.monotonic() < deadline:
            fault = FAULTS[i % len(FAULTS)]
            if fault == "burst" and w != 0:  # one burst at a time
                i += 1
                continue
            try:
                problem = _fault(client, fault, i, max_tokens, capacity, stats)
            except (OSError, http.client.HTTPException, ValueError, KeyError) as e:
                problem = f"{type(e).__name__}: {e}"
            with lock:
                counts[fault]["unexpected" if problem else "ok"] += 1
                if problem and len(problems) < 20:
                    problems.append(f"{fault}: {problem}")
            i += 1

    threads = [threading.Thread(target=work, args=(w,)) for w in range(workers)]
    threads.append(threading.Thread(target=sample))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # after the soak: healthy, and every sequence released (drained), within 30 s
    drained, healthy = False, False
    until = time.monotonic() + 30
    while time.monotonic() < until:
        try:
            healthy = client.get("/health")[0] == 200
            drained = healthy and _metric(client, "sqft_requests_in_flight") == 0 \
                and _metric(client, "sqft_engine_requests") == 0
        except OSError:
            healthy = drained = False
        if drained:
            break
        time.sleep(0.25)
    result = {"seconds": seconds, "workers": workers, "max_tokens": max_tokens, "queue_capacity": capacity,
              "outcomes": {f: dict(c) for f, c in counts.items()},
              "unexpected": sum(c["unexpected"] for c in counts.values()), "problems": problems,
              **stats, "healthy_after": healthy, "drained_after": drained}
    result.update(_rss_summary(rss, seconds * warmup_fraction, rss_growth_limit_mib, pid))
    if seconds < MIN_SECONDS_FOR_RSS and pid is not None:
        result.update(rss_bounded=None, rss_note=f"a {seconds:g} s soak is too short to judge memory")
    result["passed"] = bool(result["unexpected"] == 0 and healthy and drained
                            and result["rss_bounded"] is not False
                            and stats["burst_503"] > 0 and sum(counts["burst"].values()) > 0)
    return result


def _rss_summary(rss: list[tuple[float, int]], warmup_s: float, limit_mib: float, pid: int | None) -> dict:
    """RSS after warm-up: growth = median of the last quarter - median of the first quarter."""
    if pid is None:
        return {"rss_bounded": True, "rss_note": "no --pid: memory not sampled"}
    steady = [kib / 1024 for t, kib in rss if t >= warmup_s]
    if len(steady) < 4:
        return {"rss_bounded": False, "rss_note": f"only {len(steady)} samples after warm-up"}
    q = max(1, len(steady) // 4)
    growth = statistics.median(steady[-q:]) - statistics.median(steady[:q])
    return {"rss_samples": len(rss), "rss_start_mib": rss[0][1] / 1024, "rss_after_warmup_mib": steady[0],
            "rss_end_mib": steady[-1], "rss_max_mib": max(kib for _, kib in rss) / 1024,
            "rss_growth_mib": growth, "rss_growth_limit_mib": limit_mib, "rss_bounded": growth < limit_mib}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m deploy.soak", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", required=True, help="a running deploy.server (loopback)")
    ap.add_argument("--pid", type=int, default=None, help="its process id, to sample its memory")
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--api-key-env", metavar="VAR", default=None, help="send the key in this variable")
    args = ap.parse_args(argv)
    if urlparse(args.url).hostname not in ("127.0.0.1", "localhost", "::1"):
        ap.error("the soak sends faulty traffic: point it at a loopback server only")
    key = os.environ.get(args.api_key_env) if args.api_key_env else None
    result = run_soak(args.url, args.seconds, pid=args.pid, key=key, workers=args.workers,
                      max_tokens=args.max_tokens)
    print(json.dumps(result, indent=2))
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
