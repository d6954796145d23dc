"""Finding the layers a stage works on: Linear modules inside the decoder blocks, by FQN suffix."""

from __future__ import annotations

from torch import nn

from .errors import ConfigError, UnsupportedModelError


def decoder_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The model's stack of decoder blocks: `(fqn, ModuleList)`.

    HF causal LMs keep it at `model.layers` (Llama, Mistral, Qwen, Phi-3...) or `transformer.h` (GPT-2
    style); otherwise the largest ModuleList whose items hold Linear layers.

    Raises:
        UnsupportedModelError: no such stack.
    """
    best: tuple[str, nn.ModuleList] | None = None
    for fqn, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and len(mod) and any(
            isinstance(m, _linear_kinds()) for m in mod[0].modules()
        ):
            if best is None or len(mod) > len(best[1]):
                best = (fqn, mod)
    if best is None:
        raise UnsupportedModelError(
            f"{type(model).__name__} has no stack of decoder blocks with Linear layers; sqft_intel "
            "supports decoder-only causal LMs such as Llama, Mistral, Qwen2 and Phi-3."
        )
    return best


def _linear_kinds() -> tuple[type, ...]:
    from .quantization.modules import Int4Linear

    return (nn.Linear, Int4Linear)


def matches(fqn: str, suffixes: tuple[str, ...]) -> bool:
    """PEFT-style target matching: the FQN equals a suffix or ends with `.suffix`."""
    return any(fqn == s or fqn.endswith("." + s) for s in suffixes)


def find_targets(
    model: nn.Module, suffixes: tuple[str, ...], *, what: str, kinds: tuple[type, ...] = (nn.Linear,)
) -> dict[str, nn.Module]:
    """Modules of type `kinds` inside the decoder blocks whose FQN ends with one of `suffixes`.

    Args:
        what: the recipe key that named the suffixes, for the error message.

    Raises:
        ConfigError: nothing matched; the message lists the Linear suffixes that exist.
    """
    prefix, _ = decoder_blocks(model)
    found = {
        fqn: mod
        for fqn, mod in model.named_modules()
        if fqn.startswith(prefix + ".") and isinstance(mod, kinds) and matches(fqn, suffixes)
    }
    if not found:
        available = sorted(
            {fqn.rsplit(".", 1)[-1] for fqn, m in model.named_modules()
             if fqn.startswith(prefix + ".") and isinstance(m, _linear_kinds())}
        )
        raise ConfigError(
            f"`{what}`={list(suffixes)} matched no Linear layer in the decoder blocks of "
            f"{type(model).__name__}; available suffixes: {available}."
        )
    return found


def replace_module(model: nn.Module, fqn: str, module: nn.Module) -> None:
    """Put `module` at `fqn`, so the model keeps its structure and names (no wrapper)."""
    parent, _, child = fqn.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)
