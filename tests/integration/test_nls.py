"""NLS: ranks are drawn once per optimizer step; recomputed forwards see the same rank."""

import torch

import sqft_intel as sq
from sqft_intel.adapters.api import rank_groups


def adapted(model, masks=None, mode="lora"):
    sq.add_adapters_(model, sq.NLSConfig(mode=mode, rank_space=(8, 6, 4), alpha=16.0,
                                          dropout=0.0), masks=masks)
    return model


def test_groups_share_one_rank_per_block(tiny_llama):
    res = sq.add_adapters_(tiny_llama, sq.NLSConfig(rank_space=(8, 6, 4), mode="lora"))
    assert res.groups["model.layers.0.elastic"] == (8, 6, 4)
    assert res.groups["model.layers.0.mlp.up_proj"] == (8,)  # fixed at r_max
    ranks = sq.sample_ranks_(tiny_llama, torch.Generator().manual_seed(0))
    for fqn, m in tiny_llama.named_modules():
        if isinstance(m, sq.ElasticLoraLinear) and "self_attn" in fqn:
            assert m.active_rank == ranks[m.group]


def test_same_seed_same_rank_sequence(tiny_llama):
    adapted(tiny_llama)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    seq1 = [sq.sample_ranks_(tiny_llama, g1) for _ in range(10)]
    seq2 = [sq.sample_ranks_(tiny_llama, g2) for _ in range(10)]
    assert seq1 == seq2
    assert len({tuple(s.values()) for s in seq1}) > 1  # it does vary step to step


def test_heuristic_is_the_median_and_custom_is_checked(tiny_llama):
    adapted(tiny_llama)
    ranks = sq.set_active_ranks_(tiny_llama, "heuristic")
    assert ranks["model.layers.0.elastic"] == 6 and ranks["model.layers.0.mlp.up_proj"] == 8
    assert sq.set_active_ranks_(tiny_llama, "minimal")["model.layers.1.elastic"] == 4
    assert sq.set_active_ranks_(tiny_llama, 8)["model.layers.1.elastic"] == 8
    import pytest

    with pytest.raises(sq.ConfigError, match=r"rank 5 .* not in its rank space \[8, 6, 4\]"):
        sq.set_active_ranks_(tiny_llama, 5)


def test_checkpointed_forward_and_backward_use_the_same_sampled_ranks(tiny_llama, tiny_tokenizer):
    """Under gradient checkpointing every block runs twice per step; both runs see one rank."""
    adapted(tiny_llama)
    seen: list[tuple[int, str, int]] = []  # (step, group, rank) for every adapter forward call
    step = {"n": 0}

    def record(module, args):
        seen.append((step["n"], module.group, module.active_rank))

    mods = [m for m in tiny_llama.modules() if isinstance(m, sq.ElasticLoraLinear)]
    for m in mods:
        m.register_forward_pre_hook(record)
    tiny_llama.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    tiny_llama.train()
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(300, (2, 12), generator=gen)
    drawn = []
    for s in range(6):
        step["n"] = s
        drawn.append(sq.sample_ranks_(tiny_llama, gen))
        tiny_llama(input_ids=ids, labels=ids).loss.backward()
    for s in range(6):
        calls = [(g, r) for n, g, r in seen if n == s]
        assert len(calls) == 2 * len(mods)  # forward + recomputation in backward
        assert all(r == drawn[s][g] for g, r in calls)
    assert len({d["model.layers.0.elastic"] for d in drawn}) > 1


def test_gradients_with_and_without_checkpointing_match(tiny_llama):
    import copy

    adapted(tiny_llama)
    for m in tiny_llama.modules():
        if isinstance(m, sq.ElasticLoraLinear):
            torch.nn.init.normal_(m.lora_B, std=0.05)
    other = copy.deepcopy(tiny_llama)
    other.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    ids = torch.randint(300, (2, 12), generator=torch.Generator().manual_seed(0))
    for model in (tiny_llama, other):
        model.train()
        sq.sample_ranks_(model, torch.Generator().manual_seed(3))
        model(input_ids=ids, labels=ids).loss.backward()
    g1 = {n: p.grad for n, p in tiny_llama.named_parameters() if p.grad is not None}
    g2 = {n: p.grad for n, p in other.named_parameters() if p.grad is not None}
    assert g1.keys() == g2.keys() and g1
    for n in g1:
        torch.testing.assert_close(g1[n], g2[n], atol=1e-6, rtol=1e-5)


def test_rank_groups_lists_spaces(tiny_llama):
    adapted(tiny_llama)
    groups = rank_groups(tiny_llama)
    assert sum(1 for s in groups.values() if len(s) > 1) == 2  # one elastic group per block


def test_bf16_training_tracks_fp32(tiny_tokenizer, tiny_task):
    """bf16 autocast (the CPU default where bf16 is fast) follows the fp32 loss curve closely."""
    from tests.conftest import make_tiny_llama

    items = sq.load_jsonl(tiny_task[0])
    logs = {}
    for precision in ("fp32", "bf16"):
        model = make_tiny_llama(len(tiny_tokenizer))
        torch.manual_seed(0)
        sq.add_adapters_(model, sq.NLSConfig(mode="lora", rank_space=(8, 4), alpha=16))
        res = sq.finetune_(model, tiny_tokenizer, items,
                           sq.TrainConfig(steps=8, batch_size=8, lr=1e-2, warmup_steps=0,
                                          precision=precision, max_length=64), progress=False)
        logs[precision] = [r["loss"] for r in res.log]
    fp32, bf16 = torch.tensor(logs["fp32"]), torch.tensor(logs["bf16"])
    assert fp32[-1] < fp32[0] and bf16[-1] < bf16[0]  # both learn
    assert ((bf16 - fp32).abs() / fp32).max() < 0.01, (logs["fp32"], logs["bf16"])  # measured 1e-4
