"""A ~20 s fault soak of deploy/server.py (a subprocess on the tiny INT4 export, loopback):
clients that drop streams and requests, malformed and oversize bodies, bursts over a queue of 4.
The server stays up, every admitted request gets an answer or a clean JSON error, the queue
drains, and its RSS (sampled from /proc) stops growing after warm-up."""

import pytest

pytest.importorskip("openvino_genai")

from deploy.load_test import ServerProcess  # noqa: E402
from deploy.soak import FAULTS, run_soak  # noqa: E402


@pytest.mark.slow
def test_soak_with_faulty_clients(tiny_int4_run):
    server = ServerProcess("deploy.server", tiny_int4_run[0], "--queue-size", "4", "--no-access-log",
                           env={"OMP_NUM_THREADS": "1"})
    try:
        result = run_soak(server.url, 20, pid=server.pid, workers=4, max_tokens=16)
        assert server.alive()
    finally:
        returncode = server.stop()
    assert result["unexpected"] == 0, result["problems"]
    assert all(result["outcomes"][f].get("ok", 0) > 0 for f in FAULTS), result["outcomes"]
    assert result["burst_503"] > 0 and result["max_503_seconds"] < 2.0  # 503 at once, not queued
    assert result["healthy_after"] and result["drained_after"]  # dropped clients freed their places
    assert result["rss_bounded"], {k: v for k, v in result.items() if k.startswith("rss")}
    assert result["passed"] and returncode == 0  # and it stops cleanly on Ctrl-C
