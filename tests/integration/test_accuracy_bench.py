"""Smoke run of benchmarks/accuracy.py on the tiny model: every row, and each row's sparsity and
precision as the table claims them."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_accuracy_table_smoke(tmp_path, tiny_recipe):
    out = tmp_path / "acc"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "accuracy.py"), "--recipe", str(tiny_recipe),
         "--out", str(out), "--steps", "2", "--items", "8", "--json", "smoke-accuracy-test",
         "--set", "quantize.group_size=32", "--threads", "1"],
        capture_output=True, text=True, timeout=900)
    result = ROOT / "benchmarks" / "results" / "smoke-accuracy-test.json"
    try:
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
        rows = {r["variant"]: r for r in json.loads(result.read_text())["rows"]}
        table = result.with_suffix(".md").read_text()
    finally:
        result.unlink(missing_ok=True)
        result.with_suffix(".md").unlink(missing_ok=True)
    assert len(rows) == 10 and all(r["n"] == 8 for r in rows.values())
    assert all(name in table for name in rows)
    assert rows["dense"]["sparsity"] < 0.01 and rows["dense + LoRA, merged"]["sparsity"] < 0.01
    # a plain merge refills the zeros of every adapted layer (the others stay pruned)
    assert rows["sparse + LoRA, merged"]["sparsity"] < 0.3
    assert rows["sparse + LoRA, merged"]["new_nonzeros"] > 0
    for name in ("sparse", "Shears (sparse + NLS), unmerged", "SQFT + SparsePEFT, merged",
                 "SQFT (INT4 + NLS), unmerged", "SQFT + QA-SparsePEFT, merged",
                 "naive: SparsePEFT merge -> RTN INT4"):
        assert rows[name]["sparsity"] >= 0.5 and rows[name]["new_nonzeros"] == 0, name
    int4 = [n for n, r in rows.items() if r["precision"].startswith("INT4")]
    assert sorted(int4) == sorted(["sparse INT4 (GPTQ)", "SQFT (INT4 + NLS), unmerged",
                                   "SQFT + QA-SparsePEFT, merged", "naive: SparsePEFT merge -> RTN INT4"])
    assert rows["Shears (sparse + NLS), unmerged"]["adapters"] == "unmerged"
    assert rows["Shears (sparse + NLS), unmerged"]["adapter_params"] > 0
