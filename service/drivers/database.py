"""Engine construction: one place that knows PostgreSQL from SQLite.

SQLite runs in WAL mode with a busy timeout and foreign keys on, and its transactions are
begun explicitly (``BEGIN IMMEDIATE`` for writers) so that concurrent writers queue on the
busy timeout instead of failing mid-transaction. PostgreSQL connections carry a connect
timeout, so an unreachable server fails fast instead of hanging a call, and are not pinged on
checkout: :func:`first_round_trip` makes a connection's first round trip its liveness check.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import psycopg
from psycopg import pq
from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import make_url

T = TypeVar("T")
log = logging.getLogger(__name__)

READ_ONLY = "costsim_read_only"
_JSON = json.JSONDecoder()
# The engine execution option holding the tracer of statements sent around SQLAlchemy (set by
# ``Tracing.instrument`` in tracing.py only when tracing is on; absent, no span is made).
TRACER_OPTION = "costsim_tracer"


@dataclass(frozen=True, slots=True)
class EngineOptions:
    """Tunables for :func:`make_engine`; defaults suit a small service."""

    pool_size: int = 8
    max_overflow: int = 8
    pool_timeout_s: float = 5.0
    connect_timeout_s: int = 3
    sqlite_busy_timeout_ms: int = 10_000
    statement_timeout_ms: int = 0  # 0: none
    # PostgreSQL: ping every connection on checkout (one more round trip). Off, a connection's
    # users send their first round trip through :func:`first_round_trip`, as the unit of work
    # and the advisory lock do; on, for pools used otherwise (the health probes).
    pre_ping: bool = False


def make_engine(url: str, options: EngineOptions | None = None) -> Engine:
    """Create an engine for ``url`` (``sqlite:///path`` or ``postgresql+psycopg://...``)."""
    opts = options or EngineOptions()
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(url, opts)
    connect_args: dict[str, Any] = {"connect_timeout": opts.connect_timeout_s}
    if opts.statement_timeout_ms:
        connect_args["options"] = f"-c statement_timeout={opts.statement_timeout_ms}"
    return create_engine(
        url,
        pool_size=opts.pool_size,
        max_overflow=opts.max_overflow,
        pool_timeout=opts.pool_timeout_s,
        pool_pre_ping=opts.pre_ping,
        connect_args=connect_args,
        json_deserializer=_json_loads,
    )


def is_stale(conn: Connection, exc: BaseException) -> bool:
    """True when ``exc`` says ``conn``'s server connection is gone (killed, restarted, cut).

    A statement SQLAlchemy sent says so itself (``connection_invalidated``); one sent on the
    raw driver connection is judged by the dialect, as SQLAlchemy would.
    """
    if isinstance(exc, sa_exc.DBAPIError):
        return exc.connection_invalidated
    if conn.invalidated or conn.closed or not isinstance(exc, conn.dialect.loaded_dbapi.Error):
        return False
    return conn.dialect.is_disconnect(exc, conn.connection.dbapi_connection, None)


def forget(conn: Connection, exc: BaseException) -> None:
    """Invalidate ``conn`` and every connection its pool opened before it.

    They all predate the loss (a restarted server dropped them too): the pool reconnects them
    on their next checkout. SQLAlchemy does the same for a disconnect during a statement,
    and its pre-ping for a failed ping; a statement SQLAlchemy sent has done it already.
    """
    if conn.invalidated:
        return
    conn.engine.pool._invalidate(conn.connection, exc, _checkin=False)
    conn.invalidate(exc)


def first_round_trip(
    connect: Callable[[], Connection], send: Callable[[Connection], T]
) -> tuple[Connection, T]:
    """A connection from ``connect`` and the answer of ``send``, its first round trip.

    PostgreSQL engines skip the pool's pre-ping (one more round trip on every checkout):
    the first round trip of a connection's use is its liveness check instead. When that
    finds the connection gone, nothing has been done on it yet: the pool forgets it (and
    the connections older than it) and ``send`` goes again once on a new connection. If
    that one fails too, the database really is down, and the error propagates.
    """
    conn = connect()
    try:
        return conn, send(conn)
    except Exception as exc:
        stale = is_stale(conn, exc)
        if stale:
            forget(conn, exc)
        conn.close()
        if not stale:
            raise
        log.info("a pooled connection was gone (%s); retrying on a new one", type(exc).__name__)
    except BaseException:
        conn.close()
        raise
    conn = connect()
    try:
        return conn, send(conn)
    except BaseException:
        conn.close()
        raise


def _json_loads(data: bytes) -> Any:
    """``json.loads`` of the JSON text PostgreSQL sends (UTF-8), without its encoding sniffing.

    The same decoder as ``json.loads``, so the same values; about half its cost on the small
    documents of a report row, three of which every streamed report decodes.
    """
    return _JSON.decode(data.decode())


def _sqlite_engine(url: str, opts: EngineOptions) -> Engine:
    database = make_url(url).database
    if database and database != ":memory:":
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(
        url,
        pool_size=opts.pool_size,
        max_overflow=opts.max_overflow,
        pool_timeout=opts.pool_timeout_s,
        # Connections move between the worker threads of the gRPC server, one at a time.
        connect_args={"check_same_thread": False, "timeout": opts.sqlite_busy_timeout_ms / 1000},
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event issue BEGIN itself, instead of pysqlite's implicit one.
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        busy_timeout = f"busy_timeout={int(opts.sqlite_busy_timeout_ms)}"
        for pragma in ("journal_mode=WAL", busy_timeout, "foreign_keys=ON", "synchronous=NORMAL"):
            cursor.execute(f"PRAGMA {pragma}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        if conn.get_execution_options().get(READ_ONLY):
            conn.exec_driver_sql("BEGIN")
            conn.exec_driver_sql("PRAGMA query_only=ON")
        else:
            # A pooled connection may come back from a read-only unit of work: writers reset it.
            conn.exec_driver_sql("PRAGMA query_only=OFF")
            conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def statement_span(
    conn: Connection, operation: str, statement: str, **attributes: Any
) -> AbstractContextManager[object]:
    """A client span for a statement sent on the raw driver connection (COPY), if traced.

    SQLAlchemy's events, which the tracing instrumentation listens to, never see what a
    driver sends on ``driver_connection``; this span stands in for them, with the same
    attributes (the statement without its values). Without tracing it is a null context.
    """
    tracer = conn.get_execution_options().get(TRACER_OPTION)
    if tracer is None:
        return nullcontext()
    from opentelemetry.trace import SpanKind

    database = conn.engine.url.database or ""
    return tracer.start_as_current_span(  # type: ignore[no-any-return]
        f"{operation} {database}".strip(),
        kind=SpanKind.CLIENT,
        attributes={
            "db.system": conn.dialect.name,
            "db.name": database,
            "db.operation": operation,
            "db.statement": statement,
            **attributes,
        },
    )


def begin_on_server(conn: Connection, deadline: float | None) -> None:
    """On PostgreSQL, begin the transaction now, bounded by the call's deadline.

    The ``BEGIN`` is the one psycopg would send before the first statement (with the
    connection's read-only setting), sent now so that it is the connection's liveness check
    (:func:`first_round_trip`): nothing has been done when it finds the connection gone.

    With a ``deadline`` (``time.monotonic()`` seconds), no statement of this transaction
    outlives it: the server stops waiting for the statement when the caller has
    (``QueryCanceled``, which the drivers translate to ``DeadlineExceeded``), instead of
    running it to the end for nobody. SQLite has no statement timeout; its statements are
    short. The ``BEGIN`` and the ``SET LOCAL`` go out as
    one simple query: one round trip instead of two.
    """
    if conn.dialect.name != "postgresql":
        return
    statements = []
    if deadline is not None:
        left_ms = max(1, int((deadline - time.monotonic()) * 1000))
        statements.append(f"SET LOCAL statement_timeout = {left_ms}")
    driver = conn.connection.driver_connection
    if not isinstance(driver, psycopg.Connection) or driver.autocommit:
        for statement in statements:
            conn.exec_driver_sql(statement)
        return
    if driver.pgconn.transaction_status == pq.TransactionStatus.IDLE:
        statements.insert(0, begin_statement_of(driver))
    if not statements:
        return
    result = driver.pgconn.exec_("; ".join(statements).encode())
    if result.status != pq.ExecStatus.COMMAND_OK:
        message = (result.error_message or driver.pgconn.error_message).decode(errors="replace")
        raise psycopg.OperationalError(f"could not begin the transaction: {message.strip()}")


def begin_statement_of(driver: psycopg.Connection[Any]) -> str:
    """The ``BEGIN`` psycopg sends for ``driver``'s isolation level and access mode."""
    parts = ["BEGIN"]
    if driver.isolation_level is not None:
        level = psycopg.IsolationLevel(driver.isolation_level).name.replace("_", " ")
        parts.append(f"ISOLATION LEVEL {level}")
    if driver.read_only is not None:
        parts.append("READ ONLY" if driver.read_only else "READ WRITE")
    if driver.deferrable is not None:
        parts.append("DEFERRABLE" if driver.deferrable else "NOT DEFERRABLE")
    return " ".join(parts)
