"""Sub-adapter search (pure): hill-climbing and evolution over per-group ranks, and a few
candidates read off the training log (heuristic, most-sampled, lowest-loss)."""

from .candidates import (
    LOWEST_LOSS,
    lowest_loss,
    most_sampled,
    score_candidates,
    training_candidates,
)
from .search import STRATEGIES, SearchResult, Trial, evolve, hill_climb

__all__ = ["STRATEGIES", "SearchResult", "Trial", "evolve", "hill_climb",
           "LOWEST_LOSS", "lowest_loss", "most_sampled", "score_candidates", "training_candidates"]
