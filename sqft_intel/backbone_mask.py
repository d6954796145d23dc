"""Whether a model's attention takes a custom 4D boolean mask as-is (transformers' SDPA path)."""

from __future__ import annotations

from torch import nn

from .errors import UnsupportedModelError


def supports_custom_mask(model: nn.Module) -> bool:
    """SDPA attention in transformers >= 4.56 uses a 4D bool mask verbatim (True = attend)."""
    return getattr(getattr(model, "config", None), "_attn_implementation", None) == "sdpa"


def check_custom_mask_support(model: nn.Module) -> None:
    if not supports_custom_mask(model):
        impl = getattr(getattr(model, "config", None), "_attn_implementation", None)
        raise UnsupportedModelError(
            f"packed scoring needs SDPA attention, the model uses {impl!r}; load it with "
            "attn_implementation='sdpa' or score with packed=False."
        )
