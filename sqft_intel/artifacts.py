"""Stage directories: `stage.json` read/write, atomic writes, and `load_stage`.

Every stage writes into a temporary sibling directory and renames it into place, so a crash
never leaves a half-written stage and a good stage is only replaced by a complete one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ArtifactError

STAGE_FILE = "stage.json"


def _version() -> str:
    from . import __version__

    return __version__


@contextlib.contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a fresh temporary sibling of `final`; on success it replaces `final` in one rename.

    On any exception the temporary directory is removed and an existing `final` is untouched.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        yield tmp
        if final.exists():
            old = final.with_name(f".{final.name}.old-{os.getpid()}")
            final.rename(old)
            tmp.rename(final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_text_atomic(path: Path, text: str) -> Path:
    """Write `text` to a temporary sibling and rename it over `path`: readers never see half a file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def write_json_atomic(path: Path, obj: Any) -> Path:
    return write_text_atomic(path, json.dumps(obj, indent=2) + "\n")


def save_stage(
    final: Path,
    write: Callable[[Path], None],
    *,
    stage: str,
    config: dict[str, Any],
    parent: str | None = None,
    metrics: dict[str, Any] | None = None,
    **extra: Any,
) -> Path:
    """The one way a stage directory is written: `write(tmp)` puts the files into a temporary
    sibling, `stage.json` is written last (with their sha256), and the directory is renamed into
    place. A crash leaves the previous `final`, if any, untouched."""
    with atomic_dir(final) as tmp:
        write(tmp)
        write_stage_json(tmp, stage=stage, config=config, parent=parent, metrics=metrics, **extra)
    return Path(final)


def write_stage_json(
    out_dir: Path,
    *,
    stage: str,
    config: dict[str, Any],
    parent: str | None = None,
    metrics: dict[str, Any] | None = None,
    **extra: Any,
) -> None:
    """Write `stage.json`: which stage, which version, the exact config, the parent, metrics, and
    the sha256 of every tensor file already in `out_dir` (write it last), checked by `load_stage`."""
    record = {
        "stage": stage,
        "sqft_intel_version": _version(),
        "parent": parent,
        "config": config,
        "metrics": metrics or {},
        "sha256": {f.name: sha256_file(f) for pattern in ("*.safetensors", "*.bin")
                   for f in sorted(Path(out_dir).glob(pattern))},
        **extra,
    }
    (Path(out_dir) / STAGE_FILE).write_text(json.dumps(record, indent=2, sort_keys=False) + "\n")


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class StageRecord:
    """A parsed `stage.json` plus the directory it lives in."""

    path: Path
    stage: str
    version: str
    config: dict[str, Any]
    parent: str | None
    metrics: dict[str, Any]
    raw: dict[str, Any]


def load_stage(
    path: Path | str, *, expect: str | None = None, require: tuple[str, ...] = (),
    verify: bool = True,
) -> StageRecord:
    """Read and check a stage directory.

    Args:
        path: the stage directory (e.g. `runs/x/sparsify`).
        expect: the stage name it must hold, if any.
        require: files that must exist next to `stage.json`.
        verify: check the sha256 recorded for each tensor file (a changed or truncated file fails).

    Raises:
        ArtifactError: missing directory or files, wrong stage, another major.minor version, or a
            tensor file whose content is not what the stage wrote.
    """
    path = Path(path)
    meta = path / STAGE_FILE
    if not meta.is_file():
        raise ArtifactError(
            f"`{path}` is not a stage directory (no {STAGE_FILE}); run the stage that writes it first."
        )
    try:
        raw = json.loads(meta.read_text())
    except json.JSONDecodeError as e:
        raise ArtifactError(f"`{meta}` is not valid JSON ({e}); rerun the stage.") from e
    stage = raw.get("stage")
    if expect is not None and stage != expect:
        raise ArtifactError(f"`{path}` holds stage {stage!r}, expected {expect!r}.")
    version = str(raw.get("sqft_intel_version", ""))
    if version.split(".")[:2] != _version().split(".")[:2]:
        raise ArtifactError(
            f"`{path}` was written by sqft_intel {version!r}, this is {_version()}; rerun the stage."
        )
    recorded = raw.get("sha256", {})
    missing = [f for f in (*require, *recorded) if not (path / f).exists()]
    if missing:
        raise ArtifactError(f"`{path}` is incomplete: missing {sorted(set(missing))}; rerun the stage.")
    if verify:
        changed = [f for f, digest in recorded.items() if sha256_file(path / f) != digest]
        if changed:
            raise ArtifactError(
                f"`{path}`: {changed} changed since the stage wrote them (sha256 differs); the "
                "files were modified or corrupted: rerun the stage.")
    return StageRecord(
        path=path,
        stage=stage,
        version=version,
        config=raw.get("config", {}),
        parent=raw.get("parent"),
        metrics=raw.get("metrics", {}),
        raw=raw,
    )


def load_model_stage(path: Path, stage: str, *, require: tuple[str, ...] = ()):
    """(model, tokenizer, masks) of a stage directory that holds a model, its files verified and
    its weights checked against its masks."""
    from .models import load_model
    from .sparsity.masks import MASKS_FILE, check_masks_match, load_masks

    load_stage(path, expect=stage, require=(MASKS_FILE, "config.json", *require))
    model, tok = load_model(str(path))
    masks = load_masks(path)
    check_masks_match(model, masks)
    return model, tok, masks
