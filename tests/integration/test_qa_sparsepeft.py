"""QA-SparsePEFT: train through the INT4 base's frozen grid, merge into INT4 bit for bit."""

import pytest
import torch
from torch import nn

import sqft_intel as sq
from sqft_intel.quantization.api import quantize_
from sqft_intel.quantization.config import Int4Config
from sqft_intel.quantization.fake_quant import fake_quant
from sqft_intel.quantization.int4 import expand
from sqft_intel.quantization.modules import Int4Linear
from tests.conftest import merge_keeping_logits

LOGIT_TOL = 1e-5  # issue #3: merged INT4 model vs trained fake-quant model, fp32


def int4_sparse(model):
    ids = torch.randint(300, (8, 16), generator=torch.Generator().manual_seed(0))
    res = sq.sparsify_(model, sq.SparsityConfig(sparsity=0.5), calib=ids, progress=False)
    fp = {n: p.detach().clone() for n, p in model.named_parameters() if n in res.masks}
    quantize_(model, Int4Config(method="gptq", group_size=32), masks=res.masks, calib=ids,
              progress=False)
    return res.masks, fp


def train_a_few_steps(model, steps=4):
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-3)
    gen = torch.Generator().manual_seed(1)
    model.train()
    for _ in range(steps):
        sq.sample_ranks_(model, gen)
        ids = torch.randint(300, (4, 16), generator=gen)
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()


@pytest.mark.parametrize("qa_base", ["dequantized", "fp"])
def test_int4_merge_equals_the_trained_model_bit_for_bit(tiny_llama, qa_base):
    masks, fp = int4_sparse(tiny_llama)
    grids = {f: (m.scales.clone(), m.zeros.clone()) for f, m in tiny_llama.named_modules()
             if isinstance(m, Int4Linear)}
    cfg = sq.NLSConfig(mode="qa-sparsepeft", rank_space=(8, 6, 4), alpha=16.0, qa_base=qa_base,
                       learn_scales=False)  # the base's grid, frozen (learned: the test below)
    sq.add_adapters_(tiny_llama, cfg, masks=masks, fp_weights=fp)
    train_a_few_steps(tiny_llama)
    sq.set_active_ranks_(tiny_llama, "heuristic")
    trained_q = {}
    for fqn, m in tiny_llama.named_modules():
        if isinstance(m, sq.ElasticLoraLinear):
            assert m.lora_B.abs().sum() > 0  # training moved the adapter
            w = fake_quant(m.qa_target(), m.base.scales, m.base.zeros)  # what the forward used
            g = m.base.group_size
            s, z = expand(m.base.scales.float(), g), expand(m.base.zeros.float(), g)
            trained_q[fqn] = (torch.round(w / s) + z).to(torch.uint8)
    res = merge_keeping_logits(tiny_llama, masks, LOGIT_TOL)
    for fqn, q in trained_q.items():
        merged = tiny_llama.get_submodule(fqn)
        assert isinstance(merged, Int4Linear)
        assert torch.equal(merged.int_weight(), q), fqn  # merged integers == trained integers
        assert torch.equal(merged.scales, grids[fqn][0]) and torch.equal(merged.zeros, grids[fqn][1])
        keep = masks[f"{fqn}.weight"]
        assert (merged.dequantized_weight()[~keep] == 0).all()
    assert res.metrics()["total_new_nonzeros"] == 0


def test_merged_integers_moved_off_the_base(tiny_llama):
    """The merge is not a no-op: training changed some integers (else the test above is vacuous)."""
    masks, _ = int4_sparse(tiny_llama)
    base_q = {f: m.int_weight().clone() for f, m in tiny_llama.named_modules()
              if isinstance(m, Int4Linear)}
    sq.add_adapters_(tiny_llama, sq.NLSConfig(mode="qa-sparsepeft", rank_space=(8,), alpha=16.0,
                                                        qa_base="dequantized"),
                     masks=masks)
    train_a_few_steps(tiny_llama, steps=6)
    sq.merge_(tiny_llama, masks=masks)
    changed = sum(int((tiny_llama.get_submodule(f).int_weight() != q).sum())
                  for f, q in base_q.items() if isinstance(tiny_llama.get_submodule(f), Int4Linear))
    assert changed > 0


def test_learned_scales_keep_every_zero_and_merge_bit_exact(tiny_llama):
    """`learn_scales`: σ trains (z fixed); pruned weights stay exactly 0 for every σ, and the INT4
    merge writes the trained integers and the trained σ (fp16) that the forward used."""
    masks, _ = int4_sparse(tiny_llama)
    base = {f: (m.scales.clone(), m.zeros.clone()) for f, m in tiny_llama.named_modules()
            if isinstance(m, Int4Linear)}
    cfg = sq.NLSConfig(mode="qa-sparsepeft", rank_space=(8, 6, 4), alpha=16.0, learn_scales=True,
                       qa_base="dequantized")
    sq.add_adapters_(tiny_llama, cfg, masks=masks)
    train_a_few_steps(tiny_llama, steps=6)
    sq.set_active_ranks_(tiny_llama, "heuristic")
    trained = {}
    for fqn, m in tiny_llama.named_modules():
        if isinstance(m, sq.ElasticLoraLinear):
            s16 = m.grid_scales().detach().half()  # the master, clamped and rounded
            w = fake_quant(m.qa_target(), m.grid_scales(), m.base.zeros)  # the trained forward
            keep = masks[f"{fqn}.weight"]
            assert (w[~keep] == 0).all(), fqn  # zeros stay zeros with the learned σ
            g = m.base.group_size
            trained[fqn] = (s16, torch.round(w / expand(s16.float(), g)
                                              + expand(m.base.zeros.float(), g)).to(torch.uint8))
    moved = sum(int((trained[f][0] != base[f][0]).sum()) for f in trained)
    assert moved > 0  # the scales did train
    res = merge_keeping_logits(tiny_llama, masks, LOGIT_TOL)
    for fqn, (s16, q) in trained.items():
        merged = tiny_llama.get_submodule(fqn)
        assert torch.equal(merged.scales, s16) and torch.equal(merged.zeros, base[fqn][1]), fqn
        assert torch.equal(merged.int_weight(), q), fqn
        assert (merged.dequantized_weight()[~masks[f"{fqn}.weight"]] == 0).all()
    assert res.metrics()["total_new_nonzeros"] == 0


def test_learned_scale_gradient_is_lsq_and_zero_at_pruned_weights():
    """∂Q/∂σ = round(t/σ) - t/σ inside the clamp, q - z outside, 0 where t = 0."""
    scale = torch.full((1, 1), 0.1, requires_grad=True)
    zero = torch.full((1, 1), 8, dtype=torch.uint8)
    t = torch.tensor([[0.0, 0.33, -0.26, 5.0]])
    fake_quant(t, scale, zero).sum().backward()
    expected = (3 - 3.3) + (-3 + 2.6) + (15 - 8)  # the zero adds nothing
    assert scale.grad.item() == pytest.approx(expected, abs=1e-5)


def test_learn_scales_applies_to_qa_sparsepeft_only():
    assert sq.NLSConfig().trains_scales  # the default: QA-SparsePEFT with learned scales
    assert not sq.NLSConfig(mode="sparsepeft").trains_scales
    assert not sq.NLSConfig(mode="sqft").trains_scales  # its INT4 base stays frozen
    assert not sq.NLSConfig(learn_scales=False).trains_scales


def test_ste_passes_gradient_only_inside_the_clamp_range():
    scale = torch.full((1, 1), 0.1, dtype=torch.float16)
    zero = torch.full((1, 1), 8, dtype=torch.uint8)
    t = torch.tensor([[0.0, 0.3, 0.74, 0.76, -0.84, -0.86, 5.0, -5.0]], requires_grad=True)
    w = fake_quant(torch.cat([t] * 4, dim=1)[:, :8], scale.expand(1, 1), zero.expand(1, 1))
    w.sum().backward()
    # q = round(t/0.1) + 8 in [0, 15]  <=>  t in [-0.85, 0.75)
    assert t.grad.tolist() == [[1.0, 1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0]]
    assert w[0, 0] == 0  # a zero stays zero


def test_sqft_mode_trains_on_int4_and_refuses_to_merge(tiny_llama):
    masks, _ = int4_sparse(tiny_llama)
    sq.add_adapters_(tiny_llama, sq.NLSConfig(mode="sqft", rank_space=(8, 4), alpha=16.0))
    for m in tiny_llama.modules():
        if isinstance(m, sq.ElasticLoraLinear):
            nn.init.normal_(m.lora_B, std=0.05)
            assert isinstance(m.base, Int4Linear) and m.mask is None
    ids = torch.randint(300, (2, 12), generator=torch.Generator().manual_seed(0))
    tiny_llama(input_ids=ids, labels=ids).loss.backward()
    with pytest.raises(sq.ConfigError, match="keep those adapters unmerged"):
        sq.merge_(tiny_llama)


def test_int4_modes_need_a_quantized_base(tiny_llama):
    with pytest.raises(sq.ConfigError, match="needs an INT4 base"):
        sq.add_adapters_(tiny_llama, sq.NLSConfig(mode="qa-sparsepeft"), masks={})


def test_fp_modes_refuse_an_int4_base(tiny_llama):
    masks, _ = int4_sparse(tiny_llama)
    with pytest.raises(sq.ConfigError, match="needs FP layers"):
        sq.add_adapters_(tiny_llama, sq.NLSConfig(mode="sparsepeft"), masks=masks)
