"""Pooled PostgreSQL connections the server dropped: the next user never sees them.

The engines skip the pool's pre-ping; a unit of work's BEGIN (and the advisory lock's first
try) is the liveness check, and a connection found gone is replaced before anything is done
on it. The database really down stays ``DatabaseUnavailable`` (test_unit_of_work_faults.py,
the e2e fault tests).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import psycopg
import pytest
from sqlalchemy import Engine
from sqlalchemy.engine import make_url
from sqlalchemy.pool import QueuePool

from costsim_analytics.drivers.database import make_engine
from costsim_analytics.drivers.locks import PostgresAdvisoryLock
from costsim_analytics.engines.errors import DatabaseUnavailable
from costsim_analytics.handlers.call import deadline_scope
from costsim_analytics.handlers.uow import SqlAlchemyUnitOfWork, SqlAlchemyUnitOfWorkFactory
from costsim_analytics.testing.tcp_proxy import TcpProxy


def admin(url: str) -> psycopg.Connection[tuple[object, ...]]:
    """A connection of its own (outside every engine of the test) on ``url``'s database."""
    u = make_url(url)
    return psycopg.connect(
        host=u.host, port=u.port, user=u.username, dbname=u.database, autocommit=True
    )


def terminate(url: str, *pids: int) -> None:
    """Terminate the backends ``pids`` and wait until they are gone."""
    with admin(url) as conn:
        for pid in pids:
            assert conn.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone() == (True,)
        deadline = time.monotonic() + 10
        while conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s)", (list(pids),)
        ).fetchone() != (0,):
            assert time.monotonic() < deadline, f"backends {pids} still alive"
            time.sleep(0.02)


def backend_pid(uow: SqlAlchemyUnitOfWork) -> int:
    pid = uow.provenance._conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()
    assert isinstance(pid, int)
    return pid


def read_only_setting(uow: SqlAlchemyUnitOfWork) -> str:
    value = uow.provenance._conn.exec_driver_sql("SHOW transaction_read_only").scalar_one()
    assert isinstance(value, str)
    return value


def pool_size(engine: Engine) -> int:
    """How many connections wait in ``engine``'s pool."""
    pool = engine.pool
    assert isinstance(pool, QueuePool)
    return pool.checkedin()


@pytest.fixture
def engine(postgres_migrated_url: str) -> Iterator[Engine]:
    eng = make_engine(postgres_migrated_url)
    assert not eng.pool._pre_ping  # what makes the dropped connection the unit of work's
    yield eng
    eng.dispose()


@pytest.mark.parametrize("read_only", [True, False], ids=["read-only", "write"])
@pytest.mark.parametrize("with_deadline", [True, False], ids=["deadline", "no-deadline"])
def test_a_unit_of_work_on_a_terminated_pooled_connection_succeeds(
    engine: Engine, postgres_migrated_url: str, read_only: bool, with_deadline: bool
) -> None:
    uow_factory = SqlAlchemyUnitOfWorkFactory(engine)
    with uow_factory(read_only=read_only) as uow:
        dead = backend_pid(uow)
    terminate(postgres_migrated_url, dead)
    with (
        deadline_scope(time.monotonic() + 10 if with_deadline else None),
        uow_factory(read_only=read_only) as uow,
    ):
        assert backend_pid(uow) != dead
        assert read_only_setting(uow) == ("on" if read_only else "off")
        timeout = uow.provenance._conn.exec_driver_sql("SHOW statement_timeout").scalar()
        assert (timeout != "0") is with_deadline
        versions = uow.golden.list_versions()
        uow.commit()
    assert versions == []


def test_two_terminated_pooled_connections_are_both_replaced(
    engine: Engine, postgres_migrated_url: str
) -> None:
    uow_factory = SqlAlchemyUnitOfWorkFactory(engine)
    with uow_factory(read_only=True) as first, uow_factory() as second:
        dead = {backend_pid(first), backend_pid(second)}
    assert len(dead) == 2 and pool_size(engine) == 2
    terminate(postgres_migrated_url, *dead)
    pids = set()
    for read_only in (True, False, True):  # one after the other, each from the pool
        with uow_factory(read_only=read_only) as uow:
            pids.add(backend_pid(uow))
            uow.commit()
    with uow_factory(read_only=True) as first, uow_factory() as second:  # both at once
        pids |= {backend_pid(first), backend_pid(second)}
    assert not pids & dead


def test_the_advisory_lock_on_a_terminated_pooled_connection_is_taken(
    engine: Engine, postgres_migrated_url: str
) -> None:
    with engine.connect() as conn:
        dead = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()
        conn.rollback()
    terminate(postgres_migrated_url, dead)
    lock = PostgresAdvisoryLock(engine, key=0x7374616C65)
    assert lock.acquire(timeout_s=2)
    try:
        assert lock._conn is not None
        holder = lock._conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()
        assert holder != dead
    finally:
        lock.release()


def test_a_database_down_is_unavailable_and_back_is_used_again(postgres_migrated_url: str) -> None:
    u = make_url(postgres_migrated_url)
    proxy = TcpProxy((u.host or "127.0.0.1", u.port or 5432))
    engine = make_engine(
        u.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    )
    try:
        uow_factory = SqlAlchemyUnitOfWorkFactory(engine)
        with uow_factory(read_only=True) as reader, uow_factory() as writer:
            reader.golden.list_versions()
            writer.golden.list_versions()
        assert pool_size(engine) == 2
        proxy.down()  # both pooled connections die, and no new one can be made
        for read_only in (True, False):
            with pytest.raises(DatabaseUnavailable), uow_factory(read_only=read_only):
                pass
        with (
            deadline_scope(time.monotonic() + 10),
            pytest.raises(DatabaseUnavailable),
            uow_factory(read_only=True),
        ):
            pass
        proxy.up()  # the database is back ("restarted": every old connection is gone)
        for read_only in (True, False, True):
            with uow_factory(read_only=read_only) as uow:
                assert uow.golden.list_versions() == []
                uow.commit()
    finally:
        engine.dispose()
        proxy.close()
