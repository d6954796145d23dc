"""Resource checks before heavy work: a writable output directory, disk space, and memory.

A run that dies on a full disk after an hour of training, or is OOM-killed while loading a model
larger than RAM, loses the user's time; these estimates refuse up front, with the numbers.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from .errors import ConfigError

GB = 1024**3


def _existing_ancestor(path: Path) -> Path:
    p = Path(path).absolute()
    while not p.exists():
        p = p.parent
    return p


def check_output_dir(out: Path) -> Path:
    """The nearest existing ancestor of `out`, which must be a writable directory."""
    anchor = _existing_ancestor(out)
    if not anchor.is_dir():
        raise ConfigError(f"output directory `{out}` cannot be created: `{anchor}` is a file; choose "
                          "another --out.")
    if not os.access(anchor, os.W_OK | os.X_OK):
        raise ConfigError(f"output directory `{out}` is not writable (no write permission on "
                          f"`{anchor}`); choose another --out.")
    return anchor


def available_memory_bytes() -> int | None:
    """MemAvailable from /proc/meminfo (None where unknown)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def check_resources(out: Path, n_params: int, *, stages_writing_models: int) -> None:
    """Refuse before any work when disk or memory is clearly too small.

    Estimates (fp32 master weights): memory ≈ 3 × 4 bytes/param (the model, one working copy of
    the weights, activations and adapters on top); disk ≈ 4 bytes/param per stage that writes a
    full model.
    """
    anchor = check_output_dir(out)
    model_bytes = 4 * n_params
    need_disk = model_bytes * stages_writing_models
    free = shutil.disk_usage(anchor).free
    if free < need_disk:
        raise ConfigError(f"not enough disk for `{out}`: about {need_disk / GB:.1f} GB needed "
                          f"({stages_writing_models} stages x {model_bytes / GB:.1f} GB model), "
                          f"{free / GB:.1f} GB free on `{anchor}`; free space or choose another --out.")
    avail = available_memory_bytes()
    need_ram = 3 * model_bytes
    if avail is not None and avail < need_ram:
        raise ConfigError(f"not enough memory: this model ({n_params / 1e9:.2f} B parameters) needs "
                          f"about {need_ram / GB:.1f} GB in fp32, {avail / GB:.1f} GB is available; "
                          "use a smaller model or a larger machine.")
