"""The unit of work under faults: a deadline bounds its statements, a dead connection its end."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import text

from costsim_analytics.drivers.database import make_engine
from costsim_analytics.drivers.errors import translated
from costsim_analytics.engines.errors import DatabaseUnavailable, DeadlineExceeded
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


def _kill_own_backend(conn) -> None:
    """Terminate the connection's PostgreSQL backend from another session."""
    pid = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()
    with conn.engine.connect() as other:
        other.exec_driver_sql(f"SELECT pg_terminate_backend({int(pid)})")


def test_a_read_keeps_its_answer_when_its_connection_dies_before_the_rollback(
    postgres_migrated_url,
):
    # The soak's one INTERNAL: a read had its rows, then the database went away before the
    # read-only transaction was ended; the failed ROLLBACK turned a good answer into INTERNAL.
    engine = make_engine(postgres_migrated_url)
    try:
        with SqlAlchemyUnitOfWorkFactory(engine)(read_only=True) as uow:
            answer = uow.golden.list_versions()
            _kill_own_backend(uow.provenance._conn)
        assert answer == []
        # A writer that ends without committing still says so, as a retryable error.
        with (
            pytest.raises(DatabaseUnavailable),
            SqlAlchemyUnitOfWorkFactory(engine)() as uow,
        ):
            _kill_own_backend(uow.provenance._conn)
    finally:
        engine.dispose()
