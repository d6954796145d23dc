"""`sqft report`: one self-contained HTML page (plus PNGs) about a run directory."""

from .api import write_report

__all__ = ["write_report"]
