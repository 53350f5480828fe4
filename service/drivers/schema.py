"""Alembic glue: migrate a database to head and check that its schema is current."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine

import costsim_analytics.migrations as migrations_pkg
from costsim_analytics.drivers.database import READ_ONLY
from costsim_analytics.drivers.errors import translated
from costsim_analytics.engines.errors import SchemaOutOfDate

MIGRATIONS_DIR = Path(migrations_pkg.__file__).parent


def alembic_config(url: str) -> Config:
    """An Alembic config for ``url`` that needs no alembic.ini."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    # ConfigParser interpolates '%': escape it so URLs with percent-encoding survive.
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def head_revision() -> str:
    """The newest revision this code ships."""
    head = ScriptDirectory(str(MIGRATIONS_DIR)).get_current_head()
    if head is None:
        raise RuntimeError("no Alembic revisions found")
    return head


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at, or None for an empty database."""
    # Read-only, so that on SQLite the probe never takes the write lock (BEGIN IMMEDIATE).
    with translated(), engine.connect() as conn:
        conn = conn.execution_options(**{READ_ONLY: True, "postgresql_readonly": True})
        return MigrationContext.configure(conn).get_current_revision()


def check_schema(engine: Engine) -> None:
    """Raise :class:`SchemaOutOfDate` unless the database is at head.

    Raises:
        SchemaOutOfDate: the database is behind (or ahead of) this code.
        DatabaseUnavailable: the database cannot be reached.

    """
    current, head = current_revision(engine), head_revision()
    if current != head:
        raise SchemaOutOfDate(
            f"database schema is at revision {current or '<empty>'} but this code needs "
            f"{head}: run `costsim-analytics migrate`"
        )


def upgrade(url: str, revision: str = "head") -> None:
    """Apply revisions up to ``revision``."""
    command.upgrade(alembic_config(url), revision)


def downgrade(url: str, revision: str) -> None:
    """Revert revisions down to ``revision`` (``base`` for an empty schema)."""
    command.downgrade(alembic_config(url), revision)
