"""The run directory: the only place that maps a stage to its folder and names the files in it.

```
OUT/
  sparsify/ quantize/ finetune/ select/ merge/   one folder per stage, named after it
  openvino/                                      the export stage
  summary.json  lm_eval.json  report/            evaluation and the report
```
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# stage name -> folder under OUT (the export lives where optimum-intel users look for an IR)
STAGE_DIRS = {"sparsify": "sparsify", "quantize": "quantize", "finetune": "finetune",
              "select": "select", "merge": "merge", "export": "openvino"}

SUMMARY_FILE = "summary.json"      # the accuracy table (built-in scorer)
LM_EVAL_FILE = "lm_eval.json"      # `sqft eval --harness lm-eval`
VERIFY_FILE = "verify.json"        # `sqft verify`, inside the export folder
TRAIN_LOG = "train_log.jsonl"      # one row per logged step, inside finetune/
SEARCH_LOG = "search_log.jsonl"    # every sub-adapter tried, inside select/
PARETO_FILE = "pareto.json"        # the search's Pareto front, inside select/
REPORT_DIR = "report"


@dataclass(frozen=True)
class RunDir:
    """Paths of one run (the `--out` of `sqft run`); nothing is created by reading them."""

    root: Path

    def __post_init__(self):
        object.__setattr__(self, "root", Path(self.root))

    def stage(self, name: str) -> Path:
        return self.root / STAGE_DIRS[name]

    @property
    def sparsify(self) -> Path:
        return self.stage("sparsify")

    @property
    def quantize(self) -> Path:
        return self.stage("quantize")

    @property
    def finetune(self) -> Path:
        return self.stage("finetune")

    @property
    def select(self) -> Path:
        return self.stage("select")

    @property
    def merge(self) -> Path:
        return self.stage("merge")

    @property
    def export(self) -> Path:
        return self.stage("export")

    @property
    def summary(self) -> Path:
        return self.root / SUMMARY_FILE

    @property
    def lm_eval(self) -> Path:
        return self.root / LM_EVAL_FILE

    @property
    def verify(self) -> Path:
        return self.export / VERIFY_FILE

    @property
    def report(self) -> Path:
        return self.root / REPORT_DIR

    @property
    def finetune_work(self) -> Path:
        """Checkpoints of an unfinished fine-tuning (moved into finetune/ when it completes)."""
        return self.root / ".finetune-work"

    @property
    def lm_eval_work(self) -> Path:
        return self.root / ".lm-eval-work"


def export_dir_of(path: Path) -> Path:
    """An export folder given either itself or the run directory holding it."""
    path = Path(path)
    inner = RunDir(path).export
    return inner if inner.is_dir() else path


def merge_dir_of_export(export_dir: Path) -> Path:
    """The merge stage an export inside a run directory came from."""
    return RunDir(Path(export_dir).parent).merge
