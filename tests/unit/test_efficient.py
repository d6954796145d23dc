"""The memory-efficient SparsePEFT / QA-SparsePEFT layers compute the same outputs and gradients
as plain autograd, in fp32 and under bf16 autocast, at every active rank."""

import pytest
import torch
from torch import nn

from sqft_intel.adapters.elastic_lora import ElasticLoraLinear
from sqft_intel.quantization.int4 import group_params, quantize
from sqft_intel.quantization.modules import Int4Linear


def _pair(mode: str, seed: int = 0, learn_scales: bool = False):
    g = torch.Generator().manual_seed(seed)
    lin = nn.Linear(64, 48, bias=True)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(48, 64, generator=g) * 0.1)
        lin.bias.copy_(torch.randn(48, generator=g) * 0.1)
    mask = torch.rand(48, 64, generator=g) > 0.5
    with torch.no_grad():
        lin.weight.mul_(mask)
    layers = []
    for efficient in (False, True):
        base, qa_base = lin, None
        if mode == "qa":
            s, z = group_params(lin.weight, 32, sym=False)
            base = Int4Linear.from_quantized(quantize(lin.weight, s, z), s, z, lin.bias)
            qa_base = base.dequantized_weight() * mask
        m = ElasticLoraLinear(base, rank_space=(8, 6, 4), scaling=2.0, dropout=0.0, mask=mask,
                              group="g", qa_base=qa_base, memory_efficient=efficient,
                              learn_scales=learn_scales)
        with torch.no_grad():
            m.lora_A.copy_(torch.randn(8, 64, generator=torch.Generator().manual_seed(1)) * 0.3)
            m.lora_B.copy_(torch.randn(48, 8, generator=torch.Generator().manual_seed(2)) * 0.3)
        layers.append(m.train())
    return layers


@pytest.mark.parametrize("mode", ["sparsepeft", "qa"])
@pytest.mark.parametrize("bf16", [False, True])
@pytest.mark.parametrize("rank", [8, 4])
def test_same_outputs_and_gradients(mode, bf16, rank):
    plain, efficient = _pair(mode)
    x0 = torch.randn(3, 5, 64, generator=torch.Generator().manual_seed(3))
    results = []
    for m in (plain, efficient):
        m.active_rank = rank
        x = x0.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            y = m(x)
            loss = (y.float() ** 2).sum()
        loss.backward()
        results.append((y.detach().float(), x.grad, m.lora_A.grad, m.lora_B.grad))
    tol = {"atol": 2e-2, "rtol": 2e-2} if bf16 else {"atol": 1e-5, "rtol": 1e-5}
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(b, a, **tol)
    assert results[0][2][rank:].abs().sum() == 0 == results[1][2][rank:].abs().sum()  # NLS slices
    assert results[1][2][:rank].abs().sum() > 0


@pytest.mark.parametrize("bf16", [False, True])
def test_learned_scales_same_gradients_in_both_paths(bf16):
    """QA-SparsePEFT with learned σ: the recomputing backward gives σ the same (LSQ) gradient."""
    plain, efficient = _pair("qa", learn_scales=True)
    x0 = torch.randn(3, 5, 64, generator=torch.Generator().manual_seed(3))
    grads = []
    for m in (plain, efficient):
        x = x0.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = (m(x).float() ** 2).sum()
        loss.backward()
        grads.append((m.learned_scales.grad, m.lora_A.grad, x.grad))
    assert grads[0][0].abs().sum() > 0
    tol = {"atol": 2e-2, "rtol": 2e-2} if bf16 else {"atol": 1e-4, "rtol": 1e-5}
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(b, a, **tol)


def test_efficient_path_saves_no_dense_weight():
    """What autograd keeps between forward and backward: no (out, in) float tensor but the frozen
    weight and the mask, which exist anyway."""
    plain, efficient = _pair("sparsepeft")
    x = torch.randn(4, 64, requires_grad=True)

    def saved_dense(m):
        kept = []

        def pack(t):
            ptr = t.untyped_storage().data_ptr()
            if t.numel() == 48 * 64 and ptr not in (m.base.weight.untyped_storage().data_ptr(),
                                                    m.mask.untyped_storage().data_ptr()):
                kept.append(t)  # an (out, in) tensor made in forward, e.g. W + ΔW⊙M or its transpose
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            m(x).sum()
        return len(kept)

    assert saved_dense(plain) >= 1 and saved_dense(efficient) == 0
