import torch
from torch import nn

from sqft_intel import ElasticLoraLinear

TOL = 1e-6  # fp32, a handful of small matmuls


def make(mask=None, dropout=0.0):
    torch.manual_seed(0)
    base = nn.Linear(16, 12, bias=False)
    return ElasticLoraLinear(base, rank_space=(8, 6, 4), scaling=2.0, dropout=dropout, mask=mask,
                             group="g")


def test_starts_as_the_base_layer():
    m = make()
    x = torch.randn(3, 16)
    torch.testing.assert_close(m(x), m.base(x), atol=TOL, rtol=0)


def test_sparsepeft_delta_is_zero_where_mask_is_false():
    mask = torch.rand(12, 16) > 0.5
    m = make(mask)
    nn.init.normal_(m.lora_B)
    for r in (8, 6, 4):
        dw = m.delta_weight(r)
        assert (dw[~mask] == 0).all()
        assert (dw[mask] != 0).any()


def test_forward_equals_dense_delta_at_active_rank():
    mask = torch.rand(12, 16) > 0.5
    for msk in (None, mask):
        m = make(msk)
        nn.init.normal_(m.lora_B)
        m.active_rank = 6
        x = torch.randn(5, 16)
        expected = x @ (m.base.weight + m.delta_weight(6)).T
        torch.testing.assert_close(m(x), expected, atol=1e-5, rtol=0)


def test_only_the_active_slice_gets_gradient():
    m = make(torch.rand(12, 16) > 0.5)
    nn.init.normal_(m.lora_B)
    m.active_rank = 4
    m(torch.randn(5, 16)).sum().backward()
    assert m.lora_A.grad[4:].abs().sum() == 0 and m.lora_A.grad[:4].abs().sum() > 0
    assert m.lora_B.grad[:, 4:].abs().sum() == 0 and m.lora_B.grad[:, :4].abs().sum() > 0
    assert m.base.weight.grad is None


def test_dropout_applies_to_adapter_path_only():
    m = make(dropout=0.9)
    m.train()
    x = torch.randn(4, 16)
    # B = 0 at init: whatever dropout does to the adapter input, the output is the base's
    torch.testing.assert_close(m(x), m.base(x), atol=TOL, rtol=0)


def test_fused_sparsepeft_path_equals_two_matmul_path():
    """With dropout inactive SparsePEFT runs one matmul on W + ΔW⊙M; same function, same grads."""
    mask = torch.rand(12, 16) > 0.5
    fused, split = make(mask, dropout=0.0), make(mask, dropout=0.5)
    split.load_state_dict(fused.state_dict())
    nn.init.normal_(fused.lora_B)
    split.lora_B.data.copy_(fused.lora_B.data)
    split.eval()  # dropout inactive, but the split path is the one taken in training with dropout
    x = torch.randn(5, 16)
    y_split = split.base(x) + torch.nn.functional.linear(x, split.delta_weight())
    torch.testing.assert_close(fused(x), y_split, atol=1e-5, rtol=0)
    torch.testing.assert_close(split(x), y_split, atol=1e-5, rtol=0)
    fused(x).square().sum().backward()
    y_split.square().sum().backward()
    torch.testing.assert_close(fused.lora_A.grad, split.lora_A.grad, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(fused.lora_B.grad, split.lora_B.grad, atol=1e-4, rtol=1e-4)
