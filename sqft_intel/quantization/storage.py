"""`int4.safetensors`: the one place that writes, reads and rebuilds a stage's exact INT4 integers.

Format: per quantized weight `<fqn>.weight` three tensors, `.qweight` (out, in/2) uint8 packed
(even input column in the low nibble), `.scales` (out, in/g) float16 and `.zeros` (out, in/g) uint8.
A stage holding them also writes the HF `model.safetensors` with their exact dequantization Q(W),
so any transformers tool can load it.
"""

from __future__ import annotations

from pathlib import Path

from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from ..errors import ArtifactError
from ..targets import replace_module
from .int4 import unpack
from .modules import Int4Linear

INT4_FILE = "int4.safetensors"


def int4_modules(model: nn.Module) -> dict[str, Int4Linear]:
    return {f: m for f, m in model.named_modules() if isinstance(m, Int4Linear)}


def has_int4(stage_dir: Path) -> bool:
    return (Path(stage_dir) / INT4_FILE).is_file()


def save_int4(model: nn.Module, out_dir: Path) -> None:
    """Write every `Int4Linear` of `model` into `out_dir/int4.safetensors`."""
    tensors = {}
    for fqn, m in int4_modules(model).items():
        tensors[f"{fqn}.weight.qweight"] = m.qweight.contiguous()
        tensors[f"{fqn}.weight.scales"] = m.scales.contiguous()
        tensors[f"{fqn}.weight.zeros"] = m.zeros.contiguous()
    save_file(tensors, Path(out_dir) / INT4_FILE)


def _load(stage_dir: Path) -> tuple[Path, dict[str, Tensor]]:
    path = Path(stage_dir) / INT4_FILE
    if not path.is_file():
        raise ArtifactError(f"`{path}` is missing; rerun the quantize stage.")
    return path, load_file(path)


def read_int4(stage_dir: Path) -> dict[str, tuple[Tensor, Tensor, Tensor]]:
    """Layer FQN -> (q (out, in) uint8 unpacked, scales (out, in/g) fp16, zeros (out, in/g) uint8)."""
    _, t = _load(stage_dir)
    return {key.removesuffix(".weight.qweight"): (unpack(t[key]), t[key.replace(".qweight", ".scales")],
                                                  t[key.replace(".qweight", ".zeros")])
            for key in t if key.endswith(".weight.qweight")}


def load_int4_(model: nn.Module, stage_dir: Path) -> list[str]:
    """Swap the Linear layers named in `stage_dir/int4.safetensors` for `Int4Linear`s; returns
    the weight names."""
    path, tensors = _load(stage_dir)
    names = sorted({k.rsplit(".", 1)[0] for k in tensors})  # "<fqn>.weight"
    for name in names:
        fqn = name.removesuffix(".weight")
        lin = model.get_submodule(fqn)
        q = tensors[f"{name}.qweight"]
        if not isinstance(lin, nn.Linear) or tuple(q.shape) != (lin.out_features, lin.in_features // 2):
            raise ArtifactError(f"`{name}` in {path} does not fit this model; another base model?")
        mod = Int4Linear(lin.in_features, lin.out_features,
                         lin.in_features // tensors[f"{name}.scales"].shape[1], bias=lin.bias)
        mod.qweight.copy_(q)
        mod.scales.copy_(tensors[f"{name}.scales"])
        mod.zeros.copy_(tensors[f"{name}.zeros"])
        replace_module(model, fqn, mod)
    return names


def save_model_dir(model: nn.Module, tokenizer, out_dir: Path) -> None:
    """HF save_pretrained files; for a model holding `Int4Linear`s also int4.safetensors (the exact
    integers), with the HF weights holding their exact dequantization Q(W)."""
    if int4_modules(model):
        save_int4(model, out_dir)
        with dequantized_copy(model) as plain:
            plain.save_pretrained(out_dir)
    else:
        model.save_pretrained(out_dir)
    if tokenizer is not None:
        tokenizer.save_pretrained(out_dir)


class dequantized_copy:
    """Context: the model with Int4Linear swapped for plain Linear holding Q(W), then swapped back
    (HF `save_pretrained` needs plain parameters)."""

    def __init__(self, model: nn.Module):
        self.model, self.swapped = model, {}

    def __enter__(self) -> nn.Module:
        for fqn, m in int4_modules(self.model).items():
            lin = nn.Linear(m.in_features, m.out_features, bias=m.bias is not None)
            lin.weight = nn.Parameter(m.dequantized_weight(), requires_grad=False)
            if m.bias is not None:
                lin.bias = m.bias
            self.swapped[fqn] = m
            replace_module(self.model, fqn, lin)
        return self.model

    def __exit__(self, *exc) -> None:
        for fqn, m in self.swapped.items():
            replace_module(self.model, fqn, m)
