"""The ``costsim-analytics`` command line."""

from costsim_analytics.cli.main import main

__all__ = ["main"]
