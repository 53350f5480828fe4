"""A call's deadline bounds its database work (PostgreSQL's statement timeout)."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import text

from costsim_analytics.drivers.database import make_engine
from costsim_analytics.drivers.errors import translated
from costsim_analytics.engines.errors import DeadlineExceeded
from costsim_analytics.handlers.call import deadline_scope
from costsim_analytics.handlers.uow import SqlAlchemyUnitOfWorkFactory


def test_a_statement_stops_when_the_call_deadline_passes(postgres_migrated_url):
    # PostgreSQL only: SQLite has no statement timeout (its statements are short).
    engine = make_engine(postgres_migrated_url)
    uow_factory = SqlAlchemyUnitOfWorkFactory(engine)
    started = time.monotonic()
    with (
        deadline_scope(time.monotonic() + 0.3),
        pytest.raises(DeadlineExceeded),
        uow_factory(read_only=True) as uow,
        translated(),  # as every driver call is
    ):
        uow.provenance._conn.execute(text("SELECT pg_sleep(5)"))
    assert time.monotonic() - started < 4  # stopped by the deadline, not by the sleep's end
    # Without a deadline the same connection (back in the pool) has no timeout left over.
    with uow_factory(read_only=True) as uow:
        conn = uow.provenance._conn
        assert conn.execute(text("SHOW statement_timeout")).scalar() == "0"
    engine.dispose()
