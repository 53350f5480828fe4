"""``python -m costsim_analytics``."""

from costsim_analytics.cli import main

main()
