import pytest
import torch

from sqft_intel.quantization.gptq import gptq_quantize
from sqft_intel.quantization.int4 import dequantize, group_params, pack, quantize, unpack
from sqft_intel.quantization.modules import Int4Linear
from sqft_intel.sparsity.wanda import nm_mask, row_mask


def sqnr_db(w, w_hat):
    return float(10 * torch.log10(w.pow(2).sum() / (w - w_hat).pow(2).sum()))


@pytest.mark.parametrize("sym", [False, True])
@pytest.mark.parametrize("group", [32, 64])
def test_int4_roundtrip_keeps_zeros(sym, group):
    w = torch.randn(16, 128) * nm_mask(torch.rand(16, 128), 2, 4)
    s, z = group_params(w, group, sym=sym)
    assert s.dtype == torch.float16 and z.dtype == torch.uint8
    q = quantize(w, s, z)
    assert int(q.max()) <= 15
    z_full = z.repeat_interleave(group, dim=1)
    assert (q[w == 0] == z_full[w == 0]).all()  # a zero lands on the zero point...
    w_hat = dequantize(q, s, z)
    assert (w_hat[w == 0] == 0).all()  # ...and decodes to exactly 0
    assert sqnr_db(w, w_hat) > 15


def test_pack_unpack_low_nibble_is_even_column():
    q = torch.randint(0, 16, (3, 10), dtype=torch.uint8)
    packed = pack(q)
    assert packed.shape == (3, 5) and packed.dtype == torch.uint8
    assert (packed[:, 0] & 0x0F).tolist() == q[:, 0].tolist()
    assert (packed[:, 0] >> 4).tolist() == q[:, 1].tolist()
    assert torch.equal(unpack(packed), q)


def test_int4_linear_decodes_the_grid():
    w = torch.randn(8, 64)
    s, z = group_params(w, 32, sym=False)
    q = quantize(w, s, z)
    mod = Int4Linear.from_quantized(q, s, z)
    assert torch.equal(mod.int_weight(), q)
    x = torch.randn(2, 64)
    torch.testing.assert_close(mod(x), x @ dequantize(q, s, z).T, atol=1e-6, rtol=0)


def _correlated_inputs(n=512, d=64):
    g = torch.Generator().manual_seed(0)
    base = torch.randn(n, 8, generator=g)
    return base @ torch.randn(8, d, generator=g) + 0.1 * torch.randn(n, d, generator=g)


@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_keeps_the_mask_and_beats_rtn_on_layer_output(act_order):
    X = _correlated_inputs()
    W = torch.randn(32, 64, generator=torch.Generator().manual_seed(1))
    keep = row_mask(W.abs(), 0.5)
    W = W * keep
    q, s, z = gptq_quantize(W, X.T @ X, keep, group=32, sym=False, act_order=act_order)
    z_full = z.repeat_interleave(32, dim=1)
    assert (q[~keep] == z_full[~keep]).all()  # every pruned weight held at q = z
    Wq = dequantize(q, s, z)
    assert (Wq[~keep] == 0).all()
    s_rtn, z_rtn = group_params(W, 32, sym=False)
    W_rtn = dequantize(quantize(W, s_rtn, z_rtn), s_rtn, z_rtn)
    err_gptq = (X @ (Wq - W).T).norm()
    err_rtn = (X @ (W_rtn - W).T).norm()
    assert err_gptq < err_rtn
