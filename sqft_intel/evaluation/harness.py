"""lm-evaluation-harness on our models: torch (merged, or base + unmerged adapters) and OpenVINO.

No hub is reachable on our machines, so a bundled task becomes a local lm-eval task over exactly
the items our built-in scorer sees (a JSONL file and a `multiple_choice` config: same query,
continuation " choice", acc and acc_norm), and the numbers of the two can be compared item by item.
Any other name is passed to lm-eval's own task registry (which downloads its dataset).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from ..data import TASKS, MCItem
from ..errors import ConfigError

_METRICS = [{"metric": m, "aggregation": "mean", "higher_is_better": True} for m in ("acc", "acc_norm")]


def local_task(name: str, items: list[MCItem], folder: Path) -> dict:
    """An lm-eval task config over `items`, their rows written to `folder/<name>.jsonl`."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.jsonl"
    with open(path, "w") as f:
        for it in items:
            f.write(json.dumps({"query": it.query, "choices": list(it.choices), "gold": it.gold}) + "\n")
    # an empty query (WinoGrande's whole sentences) is scored from EOS with no leading space, as
    # ours; so is the reply after a chat-rendered query
    empty = all(not it.query or not it.delimiter for it in items)
    return {
        "task": f"sqft_{name}",
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"validation": str(path)}},
        "validation_split": "validation",
        "output_type": "multiple_choice",
        "doc_to_text": "query",
        "doc_to_choice": "choices",
        "doc_to_target": "gold",
        "target_delimiter": "" if empty else " ",
        "num_fewshot": 0,
        "metric_list": _METRICS,
        "metadata": {"version": 1.0, "source": "sqft_intel bundled data"},
    }


def require_lm_eval():
    try:
        import lm_eval
    except ImportError as e:
        raise ConfigError("`eval.harness: lm-eval` needs lm-evaluation-harness: install "
                          "`sqft-intel[eval]` (the README's set-up does).") from e
    return lm_eval


def harness_lm(model=None, tokenizer=None, *, openvino_dir: Path | None = None,
               work: Path | None = None, batch_size: int = 8):
    """An lm-eval LM: HF `HFLM` around a torch model we hold, or lm-eval's `openvino` model
    (optimum-intel OVModelForCausalLM) on an export directory, compiled for f32 parity (its config
    file is written to `work`: lm-eval takes it as a path).

    `add_bos_token=False`, as our scorer: lm-eval otherwise follows the tokenizer's default, and
    the bundled GGUF tokenizer prepends `<|im_start|>` as BOS, which moved every log-likelihood
    (by 0.1-2 nats on ARC-Easy) against the model's plain-text use."""
    require_lm_eval()
    if openvino_dir is not None:
        from lm_eval.api.registry import get_model

        from ..export.api import PARITY_CONFIG, export_properties

        if work is None:
            raise ValueError("harness_lm(openvino_dir=...) needs `work`, a folder for its config")
        work.mkdir(parents=True, exist_ok=True)
        cfg = work / "ov_config.json"
        cfg.write_text(json.dumps({**export_properties(Path(openvino_dir), "CPU"), **PARITY_CONFIG}))
        return get_model("openvino")(pretrained=str(openvino_dir), ov_config=str(cfg), device="cpu",
                                     batch_size=batch_size, add_bos_token=False)
    from lm_eval.models.huggingface import HFLM

    return HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, add_bos_token=False)


def run_harness(lm, tasks: list[str], items_by_task: dict[str, list[MCItem]], work: Path, *,
                limit: int | None = None, log_samples: bool = False) -> dict:
    """lm-eval `simple_evaluate` on bundled tasks (local definitions over `items_by_task`) and
    registry tasks (by name, `limit` first items); returns lm-eval's results dict."""
    lm_eval = require_lm_eval()
    logging.getLogger("lm-eval").setLevel(logging.WARNING)
    specs = []
    for t in tasks:
        if t in TASKS or t in items_by_task:
            specs.append(local_task(t, items_by_task[t], work))
        else:
            specs.append(t)
    return lm_eval.simple_evaluate(model=lm, tasks=specs, limit=None if not limit else limit,
                                   log_samples=log_samples, verbosity="WARNING")


def scores(results: dict) -> dict[str, dict[str, float]]:
    """task -> {acc, acc_norm, n} from lm-eval's results (local tasks lose their `sqft_` prefix)."""
    out = {}
    for task, r in results["results"].items():
        out[task.removeprefix("sqft_")] = {
            "acc": r.get("acc,none"), "acc_norm": r.get("acc_norm,none"),
            "n": results.get("n-samples", {}).get(task, {}).get("effective")}
    return out


def sample_logprobs(results: dict, task: str) -> dict[int, list[float]]:
    """doc_id -> log-likelihood of each choice, from a `log_samples=True` run."""
    rows = results["samples"][f"sqft_{task}" if f"sqft_{task}" in results["samples"] else task]
    return {r["doc_id"]: [float(resp[0][0]) for resp in r["resps"]] for r in rows}
