"""`select.strategy: candidates`: the configurations read off a (fake) NLS training log, in
order heuristic, most-sampled, lowest-loss, each once, and the best-scoring one kept."""

import math

import pytest

from sqft_intel.search import (
    LOWEST_LOSS,
    lowest_loss,
    most_sampled,
    score_candidates,
    training_candidates,
)

# two elastic groups (one shared rank per block) and one fixed group, as the finetune loop has
SPACE = {"b0.elastic": (8, 6, 4), "b1.elastic": (8, 6, 4), "b0.mlp.up_proj": (8,)}
START = {"b0.elastic": 6, "b1.elastic": 6, "b0.mlp.up_proj": 8}  # median of (8, 6, 4)
COUNTS = {  # as stage.json stores them: JSON turned the rank keys into strings
    "b0.elastic": {"4": 1, "6": 1, "8": 3},
    "b1.elastic": {"4": 4, "6": 2, "8": 2},
    "b0.mlp.up_proj": {"8": 8},
}
FREQUENT = {"b0.elastic": 8, "b1.elastic": 4, "b0.mlp.up_proj": 8}


def cfg(r0: int, r1: int) -> dict:
    return {"b0.elastic": r0, "b1.elastic": r1, "b0.mlp.up_proj": 8}


def row(step: int, loss: float, r0: int, r1: int) -> dict:
    """One row as the loop logs it: elastic groups only."""
    return {"step": step, "loss": loss, "lr": 1e-3, "ranks": {"b0.elastic": r0, "b1.elastic": r1}}


def params(ranks: dict) -> int:
    return sum(ranks.values()) * 10


def test_order_is_heuristic_most_sampled_then_lowest_loss_each_once():
    log = [
        row(1, 2.0, 4, 4),
        row(2, 0.9, 6, 6),  # the heuristic: already first, not scored twice
        row(3, 1.5, 8, 8),
        row(4, 0.8, 8, 4),  # the most-sampled one: already second
        row(5, 1.2, 4, 6),
        row(6, 1.1, 6, 8),
    ]
    got = training_candidates(SPACE, START, log, COUNTS, budget=24)
    assert got == [
        ("start", START),
        ("most-sampled", FREQUENT),
        ("lowest-loss", cfg(6, 8)),  # 1.1
        ("lowest-loss", cfg(4, 6)),  # 1.2
        ("lowest-loss", cfg(8, 8)),  # 1.5
        ("lowest-loss", cfg(4, 4)),  # 2.0
    ]
    keys = [tuple(sorted(r.items())) for _, r in got]
    assert len(keys) == len(set(keys))


def test_at_most_k_lowest_loss_and_budget_caps_the_total():
    pairs = [(a, b) for a in (8, 6, 4) for b in (8, 6, 4) if (a, b) not in ((6, 6), (8, 4))]
    log = [row(i + 1, 1.0 + i / 10, a, b) for i, (a, b) in enumerate(pairs)]  # loss rises
    got = training_candidates(SPACE, START, log, COUNTS, budget=24)
    assert [o for o, _ in got] == ["start", "most-sampled"] + ["lowest-loss"] * LOWEST_LOSS
    assert [r for _, r in got[2:]] == [cfg(*p) for p in pairs[:LOWEST_LOSS]]
    three = training_candidates(SPACE, START, log, COUNTS, budget=3)
    assert three == got[:3]
    assert training_candidates(SPACE, START, log, COUNTS, budget=1) == [("start", START)]
    assert training_candidates(SPACE, START, log, COUNTS, budget=24, k=1) == got[:3]


def test_a_duplicate_takes_no_lowest_loss_place():
    # the two lowest losses are the heuristic and most-sampled configurations: the next two
    # lowest-loss ones are scored in their place
    log = [row(1, 0.1, 6, 6), row(2, 0.2, 8, 4), row(3, 0.3, 4, 4), row(4, 0.4, 8, 8)]
    got = training_candidates(SPACE, START, log, COUNTS, budget=24, k=2)
    assert got[2:] == [("lowest-loss", cfg(4, 4)), ("lowest-loss", cfg(8, 8))]


def test_a_repeated_configuration_ranks_by_its_mean_loss():
    log = [row(1, 0.5, 4, 4), row(2, 1.0, 8, 8), row(3, 2.5, 4, 4)]  # (4, 4): mean 1.5
    assert lowest_loss(SPACE, log) == [cfg(8, 8), cfg(4, 4)]
    tied = [row(1, 1.0, 8, 8), row(2, 1.0, 4, 4)]  # equal losses keep step order
    assert lowest_loss(SPACE, tied) == [cfg(8, 8), cfg(4, 4)]


def test_unusable_rows_are_skipped():
    log = [
        {"step": 1, "loss": 0.1, "lr": 1e-3},  # no ranks (logged before ranks were)
        row(2, math.nan, 8, 8),  # diverged step
        {"step": 3, "loss": 0.2, "ranks": {"b0.elastic": 8}},  # a group missing
        row(4, 0.3, 8, 5),  # 5 is not in the space (another recipe)
        {"step": 5, "loss": 0.4, "ranks": {**row(5, 0, 4, 4)["ranks"], "b9.elastic": 8}},
        {"step": 6, "loss": None, "ranks": row(6, 0, 4, 4)["ranks"]},
        row(7, 0.9, 4, 8),  # the one usable row
    ]
    assert lowest_loss(SPACE, log) == [cfg(4, 8)]


def test_old_log_without_ranks_falls_back_to_heuristic_and_most_sampled():
    old = [{"step": s, "loss": 1.0 / s, "lr": 1e-3} for s in range(1, 9)]
    assert lowest_loss(SPACE, old) == []
    assert training_candidates(SPACE, START, old, COUNTS, budget=24) == [
        ("start", START), ("most-sampled", FREQUENT)]
    # nothing at all to read: the heuristic alone
    assert training_candidates(SPACE, START, [], {}, budget=24) == [("start", START)]
    # most-sampled equal to the heuristic is not scored twice
    median = {g: {"6": 5, "8": 1} for g in ("b0.elastic", "b1.elastic")}
    assert training_candidates(SPACE, START, old, median, budget=24) == [("start", START)]


def test_most_sampled_ties_prefer_the_smaller_rank_and_need_every_elastic_group():
    counts = {"b0.elastic": {"8": 2, "6": 2, "4": 1}, "b1.elastic": {8: 1, 4: 1, 6: 0}}
    assert most_sampled(SPACE, counts) == cfg(6, 4)
    assert most_sampled(SPACE, {"b0.elastic": {"8": 2}}) is None  # b1 never counted
    assert most_sampled(SPACE, {"b0.elastic": {"8": 2}, "b1.elastic": {"5": 9}}) is None
    # fixed groups need no counts
    assert most_sampled(SPACE, {"b0.elastic": {"4": 1}, "b1.elastic": {"8": 1}}) == cfg(4, 8)


def test_score_candidates_scores_each_once_in_order_and_keeps_the_best():
    cands = [("start", START), ("most-sampled", FREQUENT), ("lowest-loss", cfg(4, 4)),
             ("lowest-loss", cfg(8, 8))]
    scores = {tuple(sorted(START.items())): 0.50, tuple(sorted(FREQUENT.items())): 0.55,
              tuple(sorted(cfg(4, 4).items())): 0.60, tuple(sorted(cfg(8, 8).items())): 0.60}
    calls, seen = [], []

    def evaluate(r):
        calls.append(dict(r))
        return scores[tuple(sorted(r.items()))]

    res = score_candidates(cands, evaluate, params, on_trial=seen.append)
    assert calls == [r for _, r in cands]
    assert [t.origin for t in res.trials] == ["start", "most-sampled", "lowest-loss", "lowest-loss"]
    assert seen == res.trials and [t.index for t in res.trials] == [0, 1, 2, 3]
    assert res.start is res.trials[0] and res.start.ranks == START
    # (4, 4) and (8, 8) tie at 0.60: the one with fewer adapter parameters wins
    assert res.best is res.trials[2] and res.best.ranks == cfg(4, 4)
    assert res.pareto()[-1] is res.best and res.pareto()[0].params == params(cfg(4, 4))


def test_score_candidates_keeps_the_start_when_nothing_beats_it():
    cands = [("start", START), ("lowest-loss", cfg(4, 4)), ("lowest-loss", cfg(8, 8))]
    res = score_candidates(cands, lambda r: 0.7 if r == START else 0.4, params)
    assert res.best is res.start and len(res.trials) == 3
    with pytest.raises(ValueError, match="starting configuration"):
        score_candidates([], lambda r: 0.0, params)
    with pytest.raises(ValueError, match="budget"):
        training_candidates(SPACE, START, [], COUNTS, budget=0)
