"""Load test for the deploy/ servers: C concurrent clients x R requests each, on one server.

    python -m deploy.load_test --url http://127.0.0.1:8000 --clients 16 --requests 200
    python -m deploy.load_test --export runs/exp1/openvino   # starts its own loopback server

Requests are streamed (server-sent events with `stream_options.include_usage`), so one run gives
latency, time to first token and generated tokens (the server's own usage count); `--no-stream`
sends plain requests (no time to first token). Prints errors, throughput and p50/p99 latencies;
`--out FILE` writes them as JSON. benchmarks/serve_load.py runs it against the serialized and the
batching server. Standard library only: the clients cost the same against either server.
"""

from __future__ import annotations

import argparse
import collections
import http.client
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

REPO = Path(__file__).resolve().parents[1]

# the same prompts, in the same order, for every server and every concurrency level
PROMPTS = tuple(f"Question: {q}\nAnswer:" for q in (
    "Which gas do plants take in from the air?", "What is the boiling point of water at sea level?",
    "Which planet is closest to the sun?", "What do bees make?", "How many legs does a spider have?",
    "What is frozen water called?", "Which organ pumps blood through the body?",
    "What force pulls objects toward the earth?", "Which metal is liquid at room temperature?",
    "What is the largest ocean on earth?", "What do caterpillars turn into?",
    "Which gas do animals breathe out?", "What is the main source of light for the earth?",
    "Which state of matter has a fixed shape?", "What makes a compass needle point north?",
    "Why do leaves change color in autumn?"))


@dataclass
class Sample:
    """One request's outcome: latency and time to first token in seconds, generated tokens."""

    latency: float
    ttft: float | None
    tokens: int
    error: str | None = None


def _headers(key: str | None) -> dict:
    return {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}


def read_events(resp: http.client.HTTPResponse, on_event=None) -> list[dict | str]:
    """The `data:` payloads of a server-sent event stream (parsed JSON, or "[DONE]")."""
    events: list[dict | str] = []
    while True:
        line = resp.readline()
        if not line:
            return events
        line = line.strip()
        if not line.startswith(b"data: "):
            continue
        data = line[len(b"data: "):].decode()
        event = data if data == "[DONE]" else json.loads(data)
        events.append(event)
        if on_event is not None:
            on_event(event)
        if event == "[DONE]":
            return events


def one_request(conn: http.client.HTTPConnection, prompt: str, max_tokens: int, key: str | None,
                stream: bool) -> Sample:
    body = {"prompt": prompt, "max_tokens": max_tokens}
    if stream:
        body.update(stream=True, stream_options={"include_usage": True})
    t0 = time.perf_counter()
    conn.request("POST", "/v1/completions", body=json.dumps(body), headers=_headers(key))
    resp = conn.getresponse()
    if resp.status != 200:
        return Sample(time.perf_counter() - t0, None, 0, f"{resp.status}: {resp.read()[:200]!r}")
    if not stream:
        out = json.loads(resp.read())
        if "choices" not in out:
            return Sample(time.perf_counter() - t0, None, 0, f"no choices: {out!r:.200}")
        return Sample(time.perf_counter() - t0, None, int(out["usage"]["completion_tokens"]))
    first: list[float] = []

    def on_event(event):
        if not first and isinstance(event, dict) and any(c.get("text") for c in event.get("choices", ())):
            first.append(time.perf_counter() - t0)

    events = read_events(resp, on_event)
    latency = time.perf_counter() - t0
    resp.read()  # the end of the chunked body, so the connection can carry the next request
    usage = [e["usage"] for e in events if isinstance(e, dict) and e.get("usage")]
    errors = [e["error"] for e in events if isinstance(e, dict) and "error" in e]
    if errors or not events or events[-1] != "[DONE]" or not usage:
        return Sample(latency, None, 0, f"bad stream: {errors[:1] or events[-2:]!r:.200}")
    return Sample(latency, first[0] if first else latency, int(usage[0]["completion_tokens"]))


def one_client(url: str, n: int, max_tokens: int, key: str | None, offset: int, stream: bool,
               prompts: tuple[str, ...], samples: list) -> None:
    u = urlparse(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=300)
    for i in range(n):
        t0 = time.perf_counter()
        try:
            samples.append(one_request(conn, prompts[(offset + i) % len(prompts)], max_tokens, key, stream))
        except (OSError, http.client.HTTPException, ValueError) as e:
            samples.append(Sample(time.perf_counter() - t0, None, 0, f"{type(e).__name__}: {e}"))
            conn.close()
            conn = http.client.HTTPConnection(u.hostname, u.port, timeout=300)
    conn.close()


def percentile(values: list[float], q: int) -> float | None:
    """The q-th percentile (1..99) of `values`; None when there are none."""
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def run_load(url: str, clients: int, requests: int, max_tokens: int, key: str | None = None,
             stream: bool = True, prompts: tuple[str, ...] = PROMPTS) -> dict:
    """`clients` threads each send `requests` requests one after another; the summary as a dict."""
    samples: list[Sample] = []
    threads = [threading.Thread(target=one_client, args=(url, requests, max_tokens, key, c * requests,
                                                         stream, prompts, samples))
               for c in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    ok = [s for s in samples if s.error is None]
    errors = [s.error for s in samples if s.error is not None]
    lat = [s.latency for s in ok]
    ttft = [s.ttft for s in ok if s.ttft is not None]
    tokens = sum(s.tokens for s in ok)
    return {"clients": clients, "requests_per_client": requests, "max_tokens": max_tokens,
            "stream": stream, "total_requests": len(samples), "errors": len(errors),
            "error_samples": errors[:5], "wall_seconds": wall,
            "requests_per_second": len(ok) / wall, "generated_tokens": tokens,
            "generated_tokens_per_second": tokens / wall,
            "latency_p50_s": percentile(lat, 50), "latency_p99_s": percentile(lat, 99),
            "latency_max_s": max(lat, default=None),
            "ttft_p50_s": percentile(ttft, 50), "ttft_p99_s": percentile(ttft, 99)}


class ServerProcess:
    """`python -m MODULE EXPORT --host 127.0.0.1 --port 0 ARGS...` in a subprocess: `.url` once it
    answers /health, `.rss_kib()` from /proc, `.stop()`. Its stderr is drained (last lines kept
    in `.log`) so a chatty access log never blocks it."""

    def __init__(self, module: str, export: Path, *args: str, key: str | None = None,
                 env: dict | None = None, timeout: float = 600):
        cmd = [sys.executable, "-m", module, str(export), "--host", "127.0.0.1", "--port", "0", *args]
        self.proc = subprocess.Popen(cmd, cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})})
        self.pid = self.proc.pid
        self.log: collections.deque[str] = collections.deque(maxlen=200)
        self.url: str | None = None
        found = threading.Event()

        def drain():
            for line in self.proc.stderr:
                self.log.append(line.rstrip())
                if self.url is None and (m := re.search(r"serving .* on (http://\S+)", line)):
                    self.url = m.group(1)
                    found.set()
            found.set()  # the process ended

        threading.Thread(target=drain, name=f"{module}-stderr", daemon=True).start()
        if not found.wait(timeout) or self.url is None:
            self.stop()
            raise RuntimeError(f"{module} did not start:\n" + "\n".join(self.log))
        u = urlparse(self.url)
        deadline = time.monotonic() + 60
        while True:
            try:
                conn = http.client.HTTPConnection(u.hostname, u.port, timeout=5)
                conn.request("GET", "/health", headers=_headers(key))
                if conn.getresponse().status == 200:
                    conn.close()
                    break
            except OSError:
                pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.stop()
                raise RuntimeError(f"{module} never answered /health:\n" + "\n".join(self.log))
            time.sleep(0.1)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def rss_kib(self) -> int:
        """Resident memory of the server process (VmRSS from /proc/PID/status), in KiB."""
        return rss_kib(self.pid)

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # both servers stop cleanly on Ctrl-C
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
        return self.proc.returncode


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m deploy.load_test", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default=None, help="a running server")
    ap.add_argument("--export", type=Path, default=None, help="start a loopback server on this export")
    ap.add_argument("--server", default="deploy.server", choices=("deploy.server", "deploy.serial_server"),
                    help="which server --export starts (default %(default)s)")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--max-tokens", type=int, default=8)
    ap.add_argument("--no-stream", action="store_true", help="plain requests (no time to first token)")
    ap.add_argument("--api-key-env", metavar="VAR", default=None, help="send the key in this variable")
    ap.add_argument("--out", type=Path, default=None, help="write the result as JSON here")
    args = ap.parse_args(argv)
    key = os.environ.get(args.api_key_env) if args.api_key_env else None
    server = None
    if args.export is not None:
        server = ServerProcess(args.server, args.export, "--queue-size", str(max(32, args.clients)))
        url = server.url
    elif args.url:
        url = args.url
    else:
        ap.error("give --url of a running server or --export to start one")
    try:
        result = run_load(url, args.clients, args.requests, args.max_tokens, key, not args.no_stream)
    finally:
        if server is not None:
            server.stop()
    if server is not None:
        result.update(export=str(args.export), server=args.server)
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
