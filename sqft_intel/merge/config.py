"""Configuration of the merge, and which merges a kind of adapter allows."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..errors import ConfigError

MergeMethod = Literal["sparsepeft", "lora"]


@dataclass(frozen=True)
class MergeConfig:
    """Args:
    method: `sparsepeft` (masked, keeps sparsity exactly) or `lora` (plain, densifies).
    """

    method: MergeMethod = "sparsepeft"

    def __post_init__(self):
        if self.method not in ("sparsepeft", "lora"):
            raise ConfigError(f"`merge.method`={self.method!r}; use 'sparsepeft' or 'lora'.")


def check_method_fits(method: MergeMethod, *, quantization_aware: bool) -> None:
    """QA-SparsePEFT adapters merge only one way: masked, onto the base's own INT4 grid."""
    if quantization_aware and method != "sparsepeft":
        raise ConfigError(
            f"`merge.method`={method!r} with QA-SparsePEFT adapters (mode 'qa-sparsepeft'): the "
            "INT4 merge is always masked on the base's grid; set `merge.method: sparsepeft`.")
