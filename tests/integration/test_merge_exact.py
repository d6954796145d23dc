"""Invariants of the SparsePEFT merge: the same function, zero new nonzeros."""

import torch
from torch import nn

import sqft_intel as sq
from tests.conftest import merge_keeping_logits

LOGIT_TOL = 1e-4  # merged vs unmerged, fp32: the same function, summed in another order


def sparse_with_adapters(model, mode="sparsepeft", ranks=(8, 6, 4)):
    ids = torch.randint(300, (8, 16), generator=torch.Generator().manual_seed(0))
    res = sq.sparsify_(model, sq.SparsityConfig(sparsity=0.5), calib=ids, progress=False)
    sq.add_adapters_(model, sq.NLSConfig(mode=mode, rank_space=ranks, alpha=16.0), masks=res.masks)
    torch.manual_seed(1)
    for m in model.modules():
        if isinstance(m, sq.ElasticLoraLinear):
            nn.init.normal_(m.lora_B, std=0.05)  # a trained-looking, nonzero adapter
    return res.masks


def test_sparsepeft_merge_is_exact_and_keeps_every_zero(tiny_llama):
    masks = sparse_with_adapters(tiny_llama)
    sq.set_active_ranks_(tiny_llama, "heuristic")
    res = merge_keeping_logits(tiny_llama, masks, LOGIT_TOL)
    params = dict(tiny_llama.named_parameters())
    for name, keep in masks.items():
        w = params[name]
        assert (w[~keep] == 0).all(), name
        assert int((w != 0).sum()) <= int(keep.sum())
        assert res.new_nonzeros.get(name, 0) == 0  # o_proj/gate_proj carry no adapter
    assert not any(isinstance(m, sq.ElasticLoraLinear) for m in tiny_llama.modules())
    # a plain merge of the same adapter would have densified the layers
    adapted = [n for n in res.unmasked_density]
    assert min(res.unmasked_density[n] for n in adapted) > 0.99


def test_plain_lora_merge_densifies(tiny_llama):
    masks = sparse_with_adapters(tiny_llama, mode="lora")
    res = sq.merge_(tiny_llama, method="lora")
    assert res.metrics()["mean_sparsity"] < 0.01
    params = dict(tiny_llama.named_parameters())
    assert sum(int((params[n][~masks[n]] != 0).sum()) for n in res.sparsity) > 0


def test_sparsepeft_merge_needs_masks(tiny_llama):
    sparse_with_adapters(tiny_llama, mode="lora")
    import pytest

    with pytest.raises(sq.ConfigError, match="needs its mask"):
        sq.merge_(tiny_llama, method="sparsepeft")


def test_merge_rejects_masks_of_another_model(tiny_llama):
    import pytest

    masks = sparse_with_adapters(tiny_llama)
    foreign = {k: ~v for k, v in masks.items()}  # pruned where this base is nonzero
    with pytest.raises(sq.ArtifactError, match="nonzero where its mask says pruned"):
        sq.merge_(tiny_llama, masks=foreign)


def test_adapters_inherit_eval_mode(tiny_llama):
    """Regression: fresh adapters were in train mode inside an eval model, so dropout ran."""
    sparse_with_adapters(tiny_llama)
    assert not any(m.training for m in tiny_llama.modules())
