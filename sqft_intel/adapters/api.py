"""Verbs over NLS adapters: add them, pick or sample their ranks, save and load them."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from ..errors import ArtifactError, ConfigError
from ..targets import decoder_blocks, find_targets, matches, replace_module
from .config import NLSConfig
from .elastic_lora import ElasticLoraLinear

ADAPTERS_FILE = "adapters.safetensors"


@dataclass
class AdapterResult:
    """What `add_adapters_` did: the adapted FQNs and the rank space of each rank group."""

    config: NLSConfig
    targeted_modules: list[str]
    groups: dict[str, tuple[int, ...]] = field(default_factory=dict)



def add_adapters_(
    model: nn.Module, config: NLSConfig, *, masks: dict[str, Tensor] | None = None,
    fp_weights: dict[str, Tensor] | None = None,
) -> AdapterResult:
    """Swap each targeted layer for an `ElasticLoraLinear` at the same FQN; freeze the rest.

    Args:
        model: a HF causal LM; for `sqft`/`qa-sparsepeft` its targets are `Int4Linear`s.
        config: rank space, targets and mode.
        masks: weight name -> (out, in) bool keep-mask; required for the masked modes.
        fp_weights: weight name -> FP sparse weight, for `qa_base="fp"`.

    Raises:
        ConfigError: no target matched, a masked mode without a mask for some target, or a mode
            that does not fit the base (INT4 modes on FP layers and the reverse).

    Example:
        >>> add_adapters_(model, NLSConfig(rank_space=(32, 24, 16)), masks=res.masks)  # +SKIP
    """
    from ..quantization.modules import Int4Linear

    targets = find_targets(model, config.target_modules, what="finetune.target_modules",
                           kinds=(nn.Linear, Int4Linear))
    wrong = [f for f, m in targets.items() if isinstance(m, Int4Linear) != config.quantized_base]
    if wrong:
        need = "an INT4 base (run the quantize stage first)" if config.quantized_base else \
            "FP layers (use mode 'sqft' or 'qa-sparsepeft' on an INT4 base)"
        raise ConfigError(
            f"`finetune.mode`={config.mode!r} needs {need}; `{wrong[0]}` is "
            f"{type(targets[wrong[0]]).__name__}."
        )
    if config.masked:
        missing = [f for f in targets if masks is None or f"{f}.weight" not in masks]
        if missing:
            raise ConfigError(
                f"`finetune.mode`={config.mode!r} needs a sparsity mask for every target, none for "
                f"{missing[:3]}{'...' if len(missing) > 3 else ''}; sparsify those layers first or "
                "use an unmasked mode ('lora', 'sqft')."
            )
    if config.mode == "qa-sparsepeft" and config.qa_base == "fp" and (
            fp_weights is None or any(f"{f}.weight" not in fp_weights for f in targets)):
        raise ConfigError("`finetune.qa_base`='fp' needs the FP sparse weights "
                          "(`fp_weights=`, name -> weight of the sparse model before quantization), "
                          "or use qa_base='dequantized'.")
    prefix, _ = decoder_blocks(model)
    model.requires_grad_(False)
    groups: dict[str, tuple[int, ...]] = {}
    for fqn, lin in targets.items():
        block = fqn[len(prefix) + 1:].split(".", 1)[0]
        if matches(fqn, config.elastic_modules):
            group, space = f"{prefix}.{block}.elastic", config.rank_space
        else:  # fixed at r_max: its own singleton group
            group, space = fqn, (config.max_rank,)
        groups[group] = space
        name = f"{fqn}.weight"
        mask = masks[name] if config.masked else None
        qa_base = None
        if config.mode == "qa-sparsepeft":
            qa_base = fp_weights[name] if config.qa_base == "fp" else lin.dequantized_weight()
            qa_base = qa_base.float() * mask.to(qa_base.device)  # W̃ is sparse by construction
        adapter = ElasticLoraLinear(lin, rank_space=space, scaling=config.scaling,
                                    dropout=config.dropout, mask=mask, group=group,
                                    qa_base=qa_base, memory_efficient=config.memory_efficient,
                                    learn_scales=config.trains_scales)
        adapter.train(lin.training)  # new modules default to train mode: keep the model's mode
        replace_module(model, fqn, adapter)
    return AdapterResult(config, sorted(targets), groups)


def adapter_modules(model: nn.Module) -> dict[str, ElasticLoraLinear]:
    return {f: m for f, m in model.named_modules() if isinstance(m, ElasticLoraLinear)}


def rank_groups(model: nn.Module) -> dict[str, tuple[int, ...]]:
    """Rank group -> its rank space, in module order."""
    out: dict[str, tuple[int, ...]] = {}
    for m in adapter_modules(model).values():
        out.setdefault(m.group, m.rank_space)
    return out


def _apply_ranks(model: nn.Module, ranks: dict[str, int]) -> None:
    for m in adapter_modules(model).values():
        m.active_rank = ranks[m.group]


def heuristic_rank(space: tuple[int, ...]) -> int:
    """SQFT's heuristic sub-adapter: the median of the rank space (lower median when even)."""
    return int(statistics.median_low(space))


def set_active_ranks_(model: nn.Module, choice: str | int | dict[str, int]) -> dict[str, int]:
    """Set every adapter's active rank; returns group -> rank.

    Args:
        choice: `"maximal"`, `"minimal"`, `"heuristic"` (median), one int for every elastic
            group, or a dict group -> rank (`custom`).

    Raises:
        ConfigError: a rank outside a group's space, or an unknown group.
    """
    groups = rank_groups(model)
    if not groups:
        raise ConfigError("the model has no sqft adapters; run add_adapters_ first.")
    if choice == "maximal":
        ranks = {g: s[0] for g, s in groups.items()}
    elif choice == "minimal":
        ranks = {g: s[-1] for g, s in groups.items()}
    elif choice in ("heuristic", "median"):
        ranks = {g: heuristic_rank(s) for g, s in groups.items()}
    elif isinstance(choice, int):
        ranks = {g: (choice if len(s) > 1 else s[0]) for g, s in groups.items()}
    elif isinstance(choice, dict):
        unknown = sorted(set(choice) - set(groups))
        if unknown:
            raise ConfigError(f"unknown rank groups {unknown[:3]}; groups are e.g. {list(groups)[:3]}.")
        ranks = {g: int(choice.get(g, s[0])) for g, s in groups.items()}
    else:
        raise ConfigError(
            f"rank choice {choice!r}; use 'maximal', 'minimal', 'heuristic', an int or a dict."
        )
    for g, r in ranks.items():
        if r not in groups[g]:
            raise ConfigError(f"rank {r} for group `{g}` is not in its rank space {list(groups[g])}.")
    _apply_ranks(model, ranks)
    return ranks


def sample_ranks_(model: nn.Module, generator: torch.Generator) -> dict[str, int]:
    """Draw one rank per group (NLS). Call once per optimizer step, never per forward.

    The draw depends only on `generator`'s state, so processes seeded alike draw alike.
    """
    ranks = {}
    for g, space in rank_groups(model).items():
        i = int(torch.randint(len(space), (1,), generator=generator)) if len(space) > 1 else 0
        ranks[g] = space[i]
    _apply_ranks(model, ranks)
    return ranks


def count_adapter_params(model: nn.Module, *, active: bool = False) -> int:
    """Adapter parameters at max rank, or at the active ranks when `active`."""
    total = 0
    for m in adapter_modules(model).values():
        r = m.active_rank if active else m.rank_space[0]
        total += r * (m.in_features + m.out_features)
    return total


def trained_tensors(m: ElasticLoraLinear) -> dict[str, nn.Parameter]:
    """An adapter's trained parameters by their file suffix: lora_A, lora_B (+ learned_scales)."""
    out = {"lora_A": m.lora_A, "lora_B": m.lora_B}
    if m.learned_scales is not None:
        out["learned_scales"] = m.learned_scales
    return out


def adapter_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """`{fqn}.lora_A` (r_max, in), `{fqn}.lora_B` (out, r_max) and, with learned scales,
    `{fqn}.learned_scales` (out, in/g) fp32, for every adapter."""
    return {f"{fqn}.{k}": p.detach().cpu().contiguous()
            for fqn, m in adapter_modules(model).items() for k, p in trained_tensors(m).items()}


def load_adapter_state_(model: nn.Module, state: dict[str, Tensor]) -> None:
    """Copy saved factors into the model's adapters; shapes and names must match exactly."""
    mods = adapter_modules(model)
    expected = {f"{f}.{k}" for f, m in mods.items() for k in trained_tensors(m)}
    if set(state) != expected:
        missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
        raise ArtifactError(
            f"adapter file does not fit this model: missing {missing[:2]}, unexpected {extra[:2]}; "
            "was it trained on another base model, with other target_modules or learn_scales?"
        )
    with torch.no_grad():
        for fqn, m in mods.items():
            for k, p in trained_tensors(m).items():
                t = state[f"{fqn}.{k}"]
                if p.shape != t.shape:
                    raise ArtifactError(
                        f"`{fqn}.{k}` has shape {tuple(t.shape)}, the model expects "
                        f"{tuple(p.shape)}; different rank_space or base model."
                    )
                p.copy_(t)


def save_adapters(model: nn.Module, out_dir: Path) -> None:
    save_file(adapter_state_dict(model), Path(out_dir) / ADAPTERS_FILE)


def load_adapters_(model: nn.Module, stage_dir: Path) -> None:
    path = Path(stage_dir) / ADAPTERS_FILE
    if not path.is_file():
        raise ArtifactError(f"`{path}` is missing; rerun the finetune stage.")
    load_adapter_state_(model, load_file(path))


def save_peft_adapter(model: nn.Module, out_dir: Path, *, base_model: str, alpha: float) -> None:
    """Write the active sub-adapter in PEFT's format (`PeftModel.from_pretrained` loads it).

    Per-module ranks go to `rank_pattern`; `alpha_pattern` keeps PEFT's alpha/r equal to our
    s = alpha / r_max. PEFT cannot apply a SparsePEFT mask: for that mode, load the merged model.
    """
    from peft import LoraConfig

    mods = adapter_modules(model)
    any_mod = next(iter(mods.values()))
    r_max = any_mod.rank_space[0]
    state, rank_pattern, alpha_pattern = {}, {}, {}
    for fqn, m in mods.items():
        r = m.active_rank
        state[f"base_model.model.{fqn}.lora_A.weight"] = m.lora_A[:r].detach().cpu().contiguous()
        state[f"base_model.model.{fqn}.lora_B.weight"] = m.lora_B[:, :r].detach().cpu().contiguous()
        rank_pattern[fqn] = r
        alpha_pattern[fqn] = m.scaling * r
    cfg = LoraConfig(
        r=r_max, lora_alpha=alpha, lora_dropout=0.0, bias="none", task_type="CAUSAL_LM",
        target_modules=sorted(mods), rank_pattern=rank_pattern, alpha_pattern=alpha_pattern,
        base_model_name_or_path=base_model,
    )
    out_dir = Path(out_dir)
    cfg.save_pretrained(out_dir)
    save_file(state, out_dir / "adapter_model.safetensors")
