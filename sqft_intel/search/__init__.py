"""Sub-adapter search (pure): hill-climbing and evolution over per-group ranks."""

from .search import STRATEGIES, SearchResult, Trial, evolve, hill_climb

__all__ = ["STRATEGIES", "SearchResult", "Trial", "evolve", "hill_climb"]
