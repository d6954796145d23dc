"""INT4 quantization of the sparse base keeps every pruned zero (rtn and mask-aware gptq)."""

import pytest
import torch

import sqft_intel as sq
from sqft_intel.quantization.api import quantize_
from sqft_intel.quantization.config import Int4Config
from sqft_intel.quantization.modules import Int4Linear
from sqft_intel.quantization.storage import load_int4_


def sparse(model):
    ids = torch.randint(300, (8, 16), generator=torch.Generator().manual_seed(0))
    res = sq.sparsify_(model, sq.SparsityConfig(sparsity=0.5), calib=ids, progress=False)
    return res.masks, ids


@pytest.mark.parametrize("method", ["rtn", "gptq"])
def test_quantized_zeros_are_exactly_the_mask(tiny_llama, method, tmp_path):
    masks, ids = sparse(tiny_llama)
    dense_w = {n: p.detach().clone() for n, p in tiny_llama.named_parameters() if n in masks}
    res = quantize_(tiny_llama, Int4Config(method=method, group_size=32), masks=masks, calib=ids,
                    progress=False)
    mods = {f"{f}.weight": m for f, m in tiny_llama.named_modules() if isinstance(m, Int4Linear)}
    assert mods.keys() == masks.keys()
    for name, keep in masks.items():
        m = mods[name]
        q, z = m.int_weight(), m.zeros.repeat_interleave(m.group_size, dim=1)
        assert (q[~keep] == z[~keep]).all(), name  # pruned: q == z
        w = m.dequantized_weight()
        assert (w[~keep] == 0).all() and res.new_nonzeros[name] == 0
        assert res.rel_error[name] < 0.2
        assert float((w - dense_w[name]).norm() / dense_w[name].norm()) == pytest.approx(
            res.rel_error[name], rel=1e-4)
    with torch.no_grad():
        assert torch.isfinite(tiny_llama(input_ids=ids[:2]).logits).all()

    # int4.safetensors round trip: the same integers, scales and zeros in a fresh model
    from sqft_intel.quantization.storage import save_int4

    save_int4(tiny_llama, tmp_path)
    from tests.conftest import make_tiny_llama

    fresh = make_tiny_llama(tiny_llama.config.vocab_size)
    names = load_int4_(fresh, tmp_path)
    assert len(names) == len(masks)
    for fqn, m in fresh.named_modules():
        if isinstance(m, Int4Linear):
            ref = tiny_llama.get_submodule(fqn)
            assert torch.equal(m.qweight, ref.qweight) and torch.equal(m.scales, ref.scales)
            assert torch.equal(m.zeros, ref.zeros)


def test_gptq_output_error_below_rtn(tiny_llama):
    """GPTQ minimizes each layer's output error on the calibration data: the model's logits on
    those inputs end up closer to the unquantized sparse model's than RTN's."""
    import copy

    masks, ids = sparse(tiny_llama)
    with torch.no_grad():
        ref = tiny_llama(input_ids=ids).logits
    rtn, gptq = copy.deepcopy(tiny_llama), copy.deepcopy(tiny_llama)
    quantize_(rtn, Int4Config(method="rtn", group_size=32), masks=masks, progress=False)
    quantize_(gptq, Int4Config(method="gptq", group_size=32), masks=masks, calib=ids,
              progress=False)
    with torch.no_grad():
        err_rtn = (rtn(input_ids=ids).logits - ref).norm()
        err_gptq = (gptq(input_ids=ids).logits - ref).norm()
    assert err_gptq < err_rtn


def test_group_size_not_dividing_names_the_layer(tiny_llama):
    masks, _ = sparse(tiny_llama)
    with pytest.raises(sq.ConfigError, match=r"group_size`=48 does not divide in_features=64 of"):
        quantize_(tiny_llama, Int4Config(method="rtn", group_size=48), masks=masks, progress=False)


def test_per_layer_fallback_is_recorded(tiny_llama):
    masks, _ = sparse(tiny_llama)
    res = quantize_(tiny_llama, Int4Config(method="rtn", group_size=48, per_layer_fallback=True),
                    masks=masks, progress=False)
    assert set(res.group_sizes.values()) == {32}  # largest even divisor of 64 and 128 below 48


def test_masks_from_another_model_are_refused(tiny_llama):
    masks, _ = sparse(tiny_llama)
    bad = {k: v[:, :-2] for k, v in masks.items()}
    with pytest.raises(sq.ArtifactError, match="do not match this model"):
        quantize_(tiny_llama, Int4Config(method="rtn"), masks=bad, progress=False)


@pytest.mark.parametrize("kwargs, match", [({"bits": 8}, "only 4-bit"), ({"group_size": 0}, "group_size"),
                                           ({"method": "awq"}, "'rtn' or 'gptq'")])
def test_bad_int4_config(kwargs, match):
    with pytest.raises(sq.ConfigError, match=match):
        Int4Config(**kwargs)
