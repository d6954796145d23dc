"""Shared benchmark plumbing: machine facts and writing a results JSON."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict:
    from sqft_intel.device import available_cores, cpu_flags

    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                if line.startswith("model name")), platform.processor())
    return {"cpu": cpu, "cores": available_cores(), "threads": torch.get_num_threads(),
            "amx_bf16": "amx_bf16" in cpu_flags(), "avx512_bf16": "avx512_bf16" in cpu_flags(),
            "torch": torch.__version__, "python": platform.python_version()}


def write_result(name: str, payload: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    record = {"benchmark": name, "date": time.strftime("%Y-%m-%d"), "machine": machine(), **payload}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(tmp, path)
    return path
