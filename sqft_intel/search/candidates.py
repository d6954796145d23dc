"""A few sub-adapter candidates read off the NLS training log, scored and the best kept.

The cheap alternative to a search, as NNCF's NLS example (`downstream_qat_with_nls`) does after
training: score the heuristic (median) configuration, the most often sampled one, and the
configurations of the logged steps with the lowest training loss, then keep the best. Pure
Python, like `search.py`: it sees the rank space, the finetune stage's log rows and rank counts,
an `evaluate(ranks) -> score` callable and a `params(ranks) -> int` cost.

The logged loss of a step is the loss of one batch drawn with one configuration: noisy (another
batch moves it more than the configuration does) and biased towards late steps (the adapters have
trained longer). It is still what NNCF's example ranks by; a candidate only earns its place on
the held-out score.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from .search import Ranks, SearchResult, Trial, _Evaluator

LOWEST_LOSS = 5
"""Lowest-loss configurations scored (NNCF's `--num_min_loss_configs` default)."""


def most_sampled(space: dict[str, tuple[int, ...]], rank_counts: dict) -> Ranks | None:
    """Per group, the rank drawn most often during training (ties: the smaller rank, fewer
    parameters); fixed groups (one rank) keep it.

    Args:
        space: group -> rank space.
        rank_counts: group -> {rank: times drawn}, the finetune stage's `metrics.rank_counts`
            (rank keys may be JSON strings).

    Returns:
        group -> rank, or None when an elastic group has no count for any rank of its space.
    """
    out: Ranks = {}
    for g, sp in space.items():
        if len(sp) == 1:
            out[g] = sp[0]
            continue
        counts = {int(r): int(n) for r, n in (rank_counts.get(g) or {}).items()}
        drawn = [(n, -r) for r, n in counts.items() if r in sp and n > 0]
        if not drawn:
            return None
        out[g] = -max(drawn)[1]
    return out


def lowest_loss(space: dict[str, tuple[int, ...]], train_log: list[dict]) -> list[Ranks]:
    """The configurations of the logged training steps, lowest loss first, each once.

    A row is usable when it has a finite `loss` and `ranks` naming a rank of its space for every
    elastic group (the loop logs elastic groups only; fixed groups are filled in). A configuration
    logged at several steps is ranked by its mean loss, as NNCF's example does; ties keep the
    earlier step first.

    Args:
        space: group -> rank space.
        train_log: the finetune stage's `train_log.jsonl` rows (`step`, `loss`, `ranks`).

    Returns:
        group -> rank dicts; empty when no row is usable (e.g. a log written before the loop
        recorded ranks).
    """
    fixed = {g: sp[0] for g, sp in space.items() if len(sp) == 1}
    elastic = {g for g, sp in space.items() if len(sp) > 1}
    losses: dict[tuple, list[float]] = {}
    configs: dict[tuple, Ranks] = {}
    for row in train_log:
        ranks, loss = row.get("ranks"), row.get("loss")
        if not isinstance(ranks, dict) or not isinstance(loss, (int, float)) or not math.isfinite(loss):
            continue
        if set(ranks) != elastic or any(ranks[g] not in space[g] for g in elastic):
            continue
        config = {g: (fixed[g] if g in fixed else int(ranks[g])) for g in space}
        key = tuple(sorted(config.items()))
        losses.setdefault(key, []).append(float(loss))
        configs.setdefault(key, config)
    order = sorted(configs, key=lambda k: sum(losses[k]) / len(losses[k]))  # stable: step order
    return [configs[k] for k in order]


def training_candidates(space: dict[str, tuple[int, ...]], start: Ranks, train_log: list[dict],
                        rank_counts: dict, *, budget: int,
                        k: int = LOWEST_LOSS) -> list[tuple[str, Ranks]]:
    """(origin, ranks) to score, in order: `start` (the heuristic), the most-sampled
    configuration, then up to `k` lowest-loss ones, each configuration once and at most `budget`
    in all. A configuration equal to an earlier one is skipped, and the next lowest-loss one
    takes its place. Without usable log rows (or rank counts) the list is shorter: the caller
    says so.

    Args:
        space: group -> rank space.
        start: the heuristic configuration, always first.
        train_log: the finetune stage's log rows (see `lowest_loss`).
        rank_counts: the finetune stage's `metrics.rank_counts` (see `most_sampled`).
        budget: most configurations returned, `start` included.
        k: most lowest-loss configurations returned.
    """
    if budget < 1:
        raise ValueError(f"budget={budget} must be >= 1 (it counts the starting configuration).")
    out = [("start", dict(start))]
    seen = {tuple(sorted(start.items()))}

    def add(origin: str, ranks: Ranks) -> bool:
        key = tuple(sorted(ranks.items()))
        if key in seen or len(out) >= budget:
            return False
        seen.add(key)
        out.append((origin, ranks))
        return True

    frequent = most_sampled(space, rank_counts)
    if frequent is not None:
        add("most-sampled", frequent)
    added = 0
    for ranks in lowest_loss(space, train_log):
        if added >= k or len(out) >= budget:
            break
        if add("lowest-loss", ranks):
            added += 1
    return out


def score_candidates(candidates: list[tuple[str, Ranks]], evaluate: Callable[[Ranks], float],
                     params: Callable[[Ranks], int], *,
                     on_trial: Callable[[Trial], None] | None = None) -> SearchResult:
    """Score every candidate once (the first is the start) and keep the best: the highest
    score, ties to fewer adapter parameters, as the searches do.

    Returns:
        A `SearchResult` like the searches' (same `trials`, `best`, `start`, `pareto()`).
    """
    if not candidates:
        raise ValueError("no candidates: the first one must be the starting configuration.")
    ev = _Evaluator(evaluate, params, len(candidates), on_trial)
    first = ev(candidates[0][1], candidates[0][0])
    for origin, ranks in candidates[1:]:
        ev(ranks, origin)
    return SearchResult(best=max(ev.trials, key=ev.key), start=first, trials=ev.trials)

