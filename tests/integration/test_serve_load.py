"""Smoke run of benchmarks/serve_load.py --quick on the tiny INT4 export: both servers at 1, 4
and 16 clients, the fault soak, and the results JSON (written under tmp_path, never under
benchmarks/results/)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("openvino_genai")

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_serve_load_quick(tiny_int4_run, tmp_path):
    out = tmp_path / "serve_load.json"
    results = sorted((ROOT / "benchmarks" / "results").iterdir())
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "serve_load.py"),
                           "--export", str(tiny_int4_run[0]), "--quick", "--out", str(out)],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert sorted((ROOT / "benchmarks" / "results").iterdir()) == results  # nothing written there
    record = json.loads(out.read_text())
    assert record["benchmark"] == "serve_load" and record["quick"] and record["machine"]["cores"] >= 1
    for name, module in (("serial", "deploy.serial_server"), ("batching", "deploy.server")):
        levels = record[name]["levels"]
        assert record[name]["module"] == module and [r["clients"] for r in levels] == [1, 4, 16]
        for r in levels:
            assert r["errors"] == 0 and r["total_requests"] == 2 * r["clients"], r["error_samples"]
            assert r["generated_tokens"] == 8 * r["total_requests"]  # the tiny model never stops early
            assert r["latency_p99_s"] >= r["latency_p50_s"] >= r["ttft_p50_s"] > 0
            assert r["requests_per_second"] > 0 and r["generated_tokens_per_second"] > 0
    summary = record["summary"]
    assert summary["errors"] == 0 and summary["goals"]["zero_errors"] and summary["goals"]["soak_passed"]
    assert summary["tokens_per_second_speedup_at_most_clients"] > 0  # the tiny model: no goal to meet
    soak = record["soak"]
    assert soak["unexpected"] == 0 and soak["burst_503"] > 0 and soak["drained_after"]
    assert soak["rss_bounded"] is None  # 5 s: too short to judge memory (tests/…/test_serve_soak.py does)
