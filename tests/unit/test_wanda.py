import torch

from sqft_intel.sparsity.wanda import nm_mask, row_mask, wanda_mask, wanda_scores


def test_row_mask_zeroes_exactly_floor_fraction_per_row():
    keep = row_mask(torch.rand(8, 50), 0.5)
    assert (keep.sum(1) == 25).all()
    keep = row_mask(torch.rand(3, 7), 0.5)  # floor(3.5) = 3 dropped per row
    assert (keep.sum(1) == 4).all()


def test_row_mask_drops_the_lowest_scores():
    scores = torch.arange(10.0).repeat(2, 1)
    keep = row_mask(scores, 0.3)
    assert keep[:, :3].logical_not().all() and keep[:, 3:].all()


def test_nm_mask_zeroes_exactly_n_per_group():
    keep = nm_mask(torch.rand(8, 32), n=2, m=4)
    assert (keep.reshape(8, 8, 4).sum(-1) == 2).all()


def test_wanda_scores_weight_times_input_norm():
    w = torch.tensor([[1.0, -2.0], [3.0, 0.5]])
    sq = torch.tensor([4.0, 1.0])  # ||X_j||^2
    torch.testing.assert_close(wanda_scores(w, sq), torch.tensor([[2.0, 2.0], [6.0, 0.5]]))


def test_wanda_prefers_inputs_with_large_activations():
    # equal weights: the input with larger activation norm must be kept
    w = torch.ones(4, 2)
    keep = wanda_mask(w, torch.tensor([100.0, 1.0]), sparsity=0.5, nm=None)
    assert keep[:, 0].all() and not keep[:, 1].any()


def test_zero_sparsity_keeps_everything():
    assert row_mask(torch.rand(4, 9), 0.0).all()
