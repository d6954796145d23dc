"""Read what a run wrote (stage.json metrics, logs, summaries) into plain dicts for the report.

Only files are read (no model is loaded), so a report of a large run takes seconds. Missing
stages or files give None: a report of a half-finished run shows what exists.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..artifacts import STAGE_FILE
from ..run_dir import PARETO_FILE, SEARCH_LOG, TRAIN_LOG, RunDir


def _json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _jsonl(path: Path) -> list[dict]:
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except (OSError, ValueError):
        return []


def _metrics(run: RunDir, stage: str) -> dict | None:
    rec = _json(run.stage(stage) / STAGE_FILE)
    return rec.get("metrics") if isinstance(rec, dict) else None


def collect(run: Path) -> dict:
    """Everything the report shows, keyed by section; absent parts are None or empty."""
    run = RunDir(run)
    sparsify, merge = _metrics(run, "sparsify"), _metrics(run, "merge")
    finetune, select = _metrics(run, "finetune"), _metrics(run, "select")
    layers = None
    if sparsify and "sparsity" in sparsify:
        before = sparsify["sparsity"]
        after = (merge or {}).get("sparsity", {})
        plain = (merge or {}).get("unmasked_density", {})
        layers = [{"name": n, "before": before[n], "after": after.get(n),
                   "plain_merge": None if n not in plain else 1.0 - plain[n]} for n in before]
    return {
        "run": str(run.root.resolve()),
        "layers": layers,
        "merge": merge,
        "train_log": _jsonl(run.finetune / TRAIN_LOG),
        "finetune": finetune,
        "rank_counts": (finetune or {}).get("rank_counts"),
        "select": select,
        "search_log": _jsonl(run.select / SEARCH_LOG),
        "pareto": _json(run.select / PARETO_FILE),
        "summary": _json(run.summary),
        "lm_eval": _json(run.lm_eval),
        "verify": _json(run.verify),
    }
