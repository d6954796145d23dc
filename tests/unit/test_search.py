"""Sub-adapter search on synthetic objectives: budget, memoization, never worse than the start,
and a Pareto front nothing dominates."""

import itertools

import pytest

from sqft_intel.data import MCItem, split_holdout
from sqft_intel.search import STRATEGIES

SPACE = {f"g{i}": (32, 24, 16) for i in range(6)}
START = {g: 24 for g in SPACE}


def objective(ranks):
    """Separable, with a known optimum: rank 32 in even groups, 16 in odd ones."""
    return sum((r == 32) if int(g[1:]) % 2 == 0 else (r == 16) for g, r in ranks.items()) / len(ranks)


def params(ranks):
    return sum(ranks.values()) * 100


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_search_respects_budget_and_never_loses_to_the_start(strategy):
    calls = []

    def evaluate(r):
        calls.append(tuple(sorted(r.items())))
        return objective(r)

    res = STRATEGIES[strategy](SPACE, START, evaluate, params, budget=15, seed=1)
    assert len(calls) == len(set(calls)) == len(res.trials) <= 15  # each configuration once
    assert res.start.ranks == START and res.trials[0] is res.start
    assert res.best.score >= res.start.score
    assert res.best.score > objective(START)  # 15 evaluations do find something better here
    assert all(r in SPACE[g] for t in res.trials for g, r in t.ranks.items())


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_search_finds_the_optimum_with_budget(strategy):
    res = STRATEGIES[strategy](SPACE, START, objective, params, budget=200, seed=0)
    assert res.best.score == 1.0
    assert res.best.ranks == {g: (32 if int(g[1:]) % 2 == 0 else 16) for g in SPACE}


def test_budget_one_returns_the_start():
    for fn in STRATEGIES.values():
        res = fn(SPACE, START, objective, params, budget=1)
        assert res.best is res.start and len(res.trials) == 1


def test_pareto_front_is_non_dominated_and_complete():
    res = STRATEGIES["evolution"](SPACE, START, objective, params, budget=40, seed=3)
    front = res.pareto()
    assert front and [t.params for t in front] == sorted(t.params for t in front)
    for a, b in itertools.product(res.trials, front):
        dominates = a.params <= b.params and a.score >= b.score and (a.params, a.score) != (b.params, b.score)
        assert not dominates, (a, b)
    # every trial off the front is dominated by (or equal to) some point on it
    for t in res.trials:
        assert any(f.params <= t.params and f.score >= t.score for f in front)
    assert max(t.score for t in front) == res.best.score


def test_bad_start_or_budget_is_refused():
    with pytest.raises(ValueError, match="budget"):
        STRATEGIES["hill-climb"](SPACE, START, objective, params, budget=0)
    with pytest.raises(ValueError, match="not in its space"):
        STRATEGIES["evolution"](SPACE, {**START, "g0": 7}, objective, params, budget=3)


def test_holdout_split_is_disjoint_seeded_and_avoids_eval_questions():
    items = [MCItem(f"q{i % 90}", ("a", "b"), 0) for i in range(100)]  # q0..q9 appear twice
    evalset = [MCItem(f"q{i}", ("a", "b"), 0) for i in range(40)]
    train, held = split_holdout(items, 20, seed=0, avoid=evalset)
    assert len(held) == 20 and len({i.query for i in held}) == 20
    keys = lambda xs: {(i.query, i.choices) for i in xs}  # noqa: E731
    assert not keys(train) & keys(held)
    assert not keys(held) & keys(evalset)
    assert len(train) + sum(items.count(h) for h in held) == len(items)
    assert split_holdout(items, 20, seed=0, avoid=evalset) == (train, held)
    assert split_holdout(items, 0) == (items, [])
