"""The SQLAlchemy unit of work: one connection, one transaction, owned by a handler.

Example:
    >>> uow_factory = SqlAlchemyUnitOfWorkFactory(engine)  # doctest: +SKIP
    >>> with uow_factory() as uow:                          # doctest: +SKIP
    ...     ids = uow.provenance.insert_batch(rows)
    ...     uow.commit()

"""

from __future__ import annotations

import logging
from collections.abc import Callable
from types import TracebackType
from typing import Protocol, Self

from sqlalchemy import Connection, Engine, RootTransaction

from costsim_analytics.drivers.canary_report_driver import SqlCanaryReportDriver
from costsim_analytics.drivers.database import READ_ONLY, begin_on_server, first_round_trip
from costsim_analytics.drivers.errors import translated
from costsim_analytics.drivers.golden_driver import SqlGoldenDriver
from costsim_analytics.drivers.idempotency_driver import SqlIdempotencyDriver
from costsim_analytics.drivers.partitions import SqlPartitionDriver
from costsim_analytics.drivers.provenance_driver import SqlProvenanceDriver
from costsim_analytics.handlers.call import current_deadline
from costsim_analytics.handlers.routing import Route, current_route

log = logging.getLogger(__name__)


class SqlAlchemyUnitOfWork:
    """A transaction on ``engine``; read-only ones are enforced by the database itself.

    PostgreSQL runs them as ``READ ONLY`` transactions, SQLite with ``PRAGMA query_only``:
    a driver call that tries to write inside one fails.
    """

    provenance: SqlProvenanceDriver
    reports: SqlCanaryReportDriver
    idempotency: SqlIdempotencyDriver
    golden: SqlGoldenDriver
    partitions: SqlPartitionDriver

    def __init__(
        self,
        engine: Engine,
        *,
        read_only: bool = False,
        connect: Callable[[Engine], Connection] | None = None,
    ) -> None:
        self._engine = engine
        self._read_only = read_only
        self._connect = connect or Engine.connect
        self._conn: Connection | None = None
        self._tx: RootTransaction | None = None
        self._committed = False

    def __enter__(self) -> Self:
        with translated():
            # The BEGIN is the connection's liveness check (the engines skip the pre-ping):
            # on a connection the server dropped, it goes again once on a new one.
            deadline = current_deadline()
            conn, _ = first_round_trip(self._open, lambda c: begin_on_server(c, deadline))
        self._conn = conn
        self.provenance = SqlProvenanceDriver(conn)
        self.reports = SqlCanaryReportDriver(conn)
        self.idempotency = SqlIdempotencyDriver(conn)
        self.golden = SqlGoldenDriver(conn)
        self.partitions = SqlPartitionDriver(conn)
        return self

    def _open(self) -> Connection:
        """A connection with its transaction begun on this side (on SQLite, on the server too)."""
        conn = self._connect(self._engine)
        try:
            if self._read_only:
                conn = conn.execution_options(**{READ_ONLY: True, "postgresql_readonly": True})
            self._tx = conn.begin()
        except BaseException:
            conn.close()
            raise
        return conn

    def commit(self) -> None:
        """Commit the transaction (a read-only one commits nothing)."""
        assert self._tx is not None, "commit() outside the with block"
        with translated():
            self._tx.commit()
        self._committed = True

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            if not self._committed and self._tx is not None and self._tx.is_active:
                with translated():
                    self._tx.rollback()
        except Exception:
            # The rollback of a dead connection fails too; the error that got us here matters
            # more. Nothing was committed, so nothing is lost. A read that got its answer
            # keeps it: ending a read-only transaction on a connection that has just died
            # changes nothing the answer depends on.
            log.warning("rollback failed", exc_info=True)
            if exc is None and not self._read_only:
                raise
        finally:
            conn.close()


class SqlAlchemyUnitOfWorkFactory:
    """Makes :class:`SqlAlchemyUnitOfWork` on one engine.

    With ``replicas``, the read-only units of work of the operations routed to replicas
    (``handlers/routing.py``) connect through them, falling back to ``engine``.
    """

    def __init__(self, engine: Engine, replicas: ReadReplicas | None = None) -> None:
        self.engine = engine
        self.replicas = replicas

    def __call__(self, *, read_only: bool = False) -> SqlAlchemyUnitOfWork:
        """A new unit of work."""
        route = current_route() if read_only and self.replicas is not None else None
        if route is not None:
            assert self.replicas is not None
            connect = _routed(self.replicas, route)
            return SqlAlchemyUnitOfWork(self.engine, read_only=True, connect=connect)
        return SqlAlchemyUnitOfWork(self.engine, read_only=read_only)


class ReadReplicas(Protocol):
    """Where a routed read connects (``drivers/replicas.py``'s ReplicaRouter)."""

    def connect(self, primary: Engine, *, replica: bool = True) -> tuple[Connection, bool]:
        """A connection on a usable replica (unless not ``replica``) or else on ``primary``.

        The flag returned is True when the connection is on a replica.
        """


def _routed(replicas: ReadReplicas, route: Route) -> Callable[[Engine], Connection]:
    def connect(primary: Engine) -> Connection:
        conn, on_replica = replicas.connect(primary, replica=route.replica_allowed)
        route.served_by_replica |= on_replica
        return conn

    return connect
