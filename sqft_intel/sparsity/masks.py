"""The stored sparsity masks: `masks.safetensors`, and the one check that weights obey them.

Masks are bool (out, in), True = kept, keyed by the weight's state_dict name. They are stored by
the sparsify stage and carried by every later stage; never re-derived from W != 0.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from ..errors import ArtifactError

MASKS_FILE = "masks.safetensors"


def save_masks(masks: dict[str, Tensor], out_dir: Path) -> None:
    save_file({k: v.contiguous().to(torch.bool) for k, v in masks.items()}, Path(out_dir) / MASKS_FILE)


def load_masks(stage_dir: Path) -> dict[str, Tensor]:
    """The stored masks of a stage (bool, True = kept)."""
    path = Path(stage_dir) / MASKS_FILE
    if not path.is_file():
        raise ArtifactError(f"`{path}` is missing; rerun the sparsify stage.")
    masks = load_file(path)
    bad = [k for k, v in masks.items() if v.dtype != torch.bool]
    if bad:
        raise ArtifactError(f"`{path}` holds non-bool masks {bad[:3]}; it was not written by sqft.")
    return masks


def check_weight_fits_mask(name: str, weight: Tensor, keep: Tensor | None) -> None:
    """`weight` has `keep`'s shape and is exactly zero wherever `keep` is False.

    Raises:
        ArtifactError: no mask, another shape (another base model), or a nonzero where the mask
            says pruned (the masks belong to another sparse model, or the weights changed).
    """
    if keep is None or tuple(keep.shape) != tuple(weight.shape):
        shape = None if keep is None else tuple(keep.shape)
        raise ArtifactError(
            f"the masks do not match this model: the mask of `{name}` has shape {shape} but the "
            f"weight is {tuple(weight.shape)}; they come from another base model (rerun sparsify "
            "on this one, or target only sparsified layers).")
    if (weight.detach()[~keep.to(device=weight.device, dtype=torch.bool)] != 0).any():
        raise ArtifactError(
            f"`{name}` is nonzero where its mask says pruned: the masks belong to another sparse "
            "model (or the weights changed after sparsify); rerun from sparsify.")


def check_masks_match(model: nn.Module, masks: dict[str, Tensor]) -> None:
    """Every mask names a weight of `model` that fits it (see `check_weight_fits_mask`)."""
    params = dict(model.named_parameters())
    for name, keep in masks.items():
        if name not in params:
            raise ArtifactError(f"mask `{name}` names no weight of this model; wrong base model?")
        check_weight_fits_mask(name, params[name], keep)
