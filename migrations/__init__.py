"""Alembic environment and revisions; shipped inside the package as costsim_analytics.migrations."""
