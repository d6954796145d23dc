"""Sub-adapter search over per-group ranks: hill-climbing and a small evolutionary search.

Pure Python: a search sees only the rank space, an `evaluate(ranks) -> score` callable and a
`params(ranks) -> int` cost, so it is tested on synthetic objectives and used on a real model by
the select stage. Every configuration is evaluated at most once (memoized); `budget` counts real
evaluations, the starting (heuristic) configuration included, so the result is never worse than
the start on the search split.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

Ranks = dict[str, int]


@dataclass
class Trial:
    """One evaluated configuration."""

    index: int
    ranks: Ranks
    score: float
    params: int
    origin: str  # start, neighbour, random, child, ...

    def as_dict(self) -> dict:
        return {"index": self.index, "score": self.score, "params": self.params,
                "origin": self.origin, "ranks": self.ranks}


@dataclass
class SearchResult:
    best: Trial
    start: Trial
    trials: list[Trial] = field(default_factory=list)

    def pareto(self) -> list[Trial]:
        """Trials no other trial beats on both axes (fewer adapter parameters, higher score),
        sorted by parameter count."""
        front: list[Trial] = []
        for t in sorted(self.trials, key=lambda t: (t.params, -t.score)):
            if not front or t.score > front[-1].score:
                front.append(t)
        return front


class _Evaluator:
    """Memoized, budgeted evaluation; `better` prefers a higher score, then fewer parameters."""

    def __init__(self, evaluate: Callable[[Ranks], float], params: Callable[[Ranks], int],
                 budget: int, on_trial: Callable[[Trial], None] | None):
        self.evaluate, self.params, self.budget, self.on_trial = evaluate, params, budget, on_trial
        self.seen: dict[tuple, Trial] = {}
        self.trials: list[Trial] = []

    @property
    def left(self) -> int:
        return self.budget - len(self.trials)

    def __call__(self, ranks: Ranks, origin: str) -> Trial:
        key = tuple(sorted(ranks.items()))
        if key in self.seen:
            return self.seen[key]
        t = Trial(len(self.trials), dict(ranks), float(self.evaluate(ranks)), int(self.params(ranks)),
                  origin)
        self.seen[key] = t
        self.trials.append(t)
        if self.on_trial:
            self.on_trial(t)
        return t

    def is_new(self, ranks: Ranks) -> bool:
        return tuple(sorted(ranks.items())) not in self.seen

    @staticmethod
    def key(t: Trial) -> tuple[float, int]:
        return (t.score, -t.params)


def _check(space: dict[str, tuple[int, ...]], start: Ranks, budget: int) -> None:
    if budget < 1:
        raise ValueError(f"budget={budget} must be >= 1 (it counts the starting configuration).")
    bad = [g for g in space if start.get(g) not in space[g]]
    if bad:
        raise ValueError(f"start rank of group {bad[0]!r} is not in its space {space[bad[0]]}.")


def hill_climb(space: dict[str, tuple[int, ...]], start: Ranks, evaluate: Callable[[Ranks], float],
               params: Callable[[Ranks], int], *, budget: int, seed: int = 0,
               on_trial: Callable[[Trial], None] | None = None) -> SearchResult:
    """First-improvement hill-climbing: from `start`, try single-group moves (one group to any other
    rank of its space) in random order and take the first that is better; stop at a local optimum
    or when the budget is spent."""
    _check(space, start, budget)
    rng = random.Random(seed)
    ev = _Evaluator(evaluate, params, budget, on_trial)
    first = current = ev(start, "start")
    while ev.left > 0:
        moves = []
        for g, sp in space.items():
            moves += [{**current.ranks, g: r} for r in sp if r != current.ranks[g]]
        moves = [m for m in moves if ev.is_new(m)]
        rng.shuffle(moves)
        improved = False
        for m in moves:
            if ev.left <= 0:
                break
            t = ev(m, "neighbour")
            if ev.key(t) > ev.key(current):
                current, improved = t, True
                break
        if not improved:
            break
    best = max(ev.trials, key=ev.key)
    return SearchResult(best=best, start=first, trials=ev.trials)


def evolve(space: dict[str, tuple[int, ...]], start: Ranks, evaluate: Callable[[Ranks], float],
           params: Callable[[Ranks], int], *, budget: int, population: int = 8, seed: int = 0,
           on_trial: Callable[[Trial], None] | None = None) -> SearchResult:
    """A (mu + lambda) evolutionary search: the population starts from `start` plus random
    configurations; each child is a uniform crossover of two tournament-picked parents with each
    rank mutated with probability 2/groups; the best `population` trials survive."""
    _check(space, start, budget)
    rng = random.Random(seed)
    ev = _Evaluator(evaluate, params, budget, on_trial)
    groups = list(space)
    first = ev(start, "start")
    pop = [first]
    for _ in range(200 * population):  # random immigrants, bounded in case the space is tiny
        if len(pop) >= population or ev.left <= 0:
            break
        r = {g: rng.choice(space[g]) for g in groups}
        if ev.is_new(r):
            pop.append(ev(r, "random"))
    p_mut = min(1.0, 2.0 / max(1, len(groups)))
    stale = 0
    while ev.left > 0 and stale < 200:
        a, b = (max(rng.sample(pop, min(2, len(pop))), key=ev.key) for _ in range(2))
        child = {g: (a if rng.random() < 0.5 else b).ranks[g] for g in groups}
        for g in groups:
            if rng.random() < p_mut:
                child[g] = rng.choice(space[g])
        if not ev.is_new(child):
            stale += 1
            continue
        stale = 0
        pop = sorted(pop + [ev(child, "child")], key=ev.key, reverse=True)[:population]
    best = max(ev.trials, key=ev.key)
    return SearchResult(best=best, start=first, trials=ev.trials)


STRATEGIES = {"hill-climb": hill_climb, "evolution": evolve}
