"""Engine construction: one place that knows PostgreSQL from SQLite.

SQLite runs in WAL mode with a busy timeout and foreign keys on, and its transactions are
begun explicitly (``BEGIN IMMEDIATE`` for writers) so that concurrent writers queue on the
busy timeout instead of failing mid-transaction. PostgreSQL connections carry a connect
timeout, so an unreachable server fails fast instead of hanging a call.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url

READ_ONLY = "costsim_read_only"


@dataclass(frozen=True, slots=True)
class EngineOptions:
    """Tunables for :func:`make_engine`; defaults suit a small service."""

    pool_size: int = 8
    max_overflow: int = 8
    pool_timeout_s: float = 5.0
    connect_timeout_s: int = 3
    sqlite_busy_timeout_ms: int = 10_000
    statement_timeout_ms: int = 0  # 0: none


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
        pool_pre_ping=True,
        connect_args=connect_args,
    )


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
