"""Resumable training checkpoints: adapters, optimizer, scheduler and RNG states, no pickle."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..adapters.api import adapter_state_dict, load_adapter_state_
from ..artifacts import atomic_dir

STATE_FILE = "trainer_state.json"


def save_checkpoint(
    ckpt_root: Path, step: int, model: nn.Module, optimizer: torch.optim.Optimizer,
    scheduler, rank_gen: torch.Generator, *, fingerprint: str, history: dict | None = None,
    keep: int = 2,
) -> Path:
    """Write `ckpt_root/step-N` atomically; keep only the newest `keep` checkpoints."""
    target = ckpt_root / f"step-{step:06d}"
    opt = optimizer.state_dict()
    tensors = {f"state.{i}.{k}": v for i, st in opt["state"].items() for k, v in st.items()}
    tensors["rng.torch"] = torch.get_rng_state()
    tensors["rng.ranks"] = rank_gen.get_state()
    with atomic_dir(target) as tmp:
        save_file(adapter_state_dict(model), tmp / "adapters.safetensors")
        save_file({k: v.contiguous() for k, v in tensors.items()}, tmp / "optimizer.safetensors")
        (tmp / STATE_FILE).write_text(json.dumps({
            "step": step, "fingerprint": fingerprint, "param_groups": opt["param_groups"],
            "scheduler": scheduler.state_dict(), "history": history or {},
        }))
    for old in sorted(ckpt_root.glob("step-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return target


def latest_checkpoint(ckpt_root: Path, fingerprint: str) -> Path | None:
    """Newest complete checkpoint written for the same run (same fingerprint), if any."""
    for path in sorted(ckpt_root.glob("step-*"), reverse=True):
        state = path / STATE_FILE
        if state.is_file() and json.loads(state.read_text()).get("fingerprint") == fingerprint:
            return path
    return None


def load_checkpoint_(
    path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler,
    rank_gen: torch.Generator,
) -> tuple[int, dict]:
    """Restore everything `save_checkpoint` wrote; returns (steps already done, history)."""
    state = json.loads((path / STATE_FILE).read_text())
    load_adapter_state_(model, load_file(path / "adapters.safetensors"))
    tensors = load_file(path / "optimizer.safetensors")
    per_param: dict[int, dict[str, torch.Tensor]] = {}
    for key, v in tensors.items():
        if key.startswith("state."):
            _, idx, name = key.split(".", 2)
            per_param.setdefault(int(idx), {})[name] = v
    optimizer.load_state_dict({"state": per_param, "param_groups": state["param_groups"]})
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(tensors["rng.torch"])
    rank_gen.set_state(tensors["rng.ranks"])
    return int(state["step"]), state.get("history", {})
