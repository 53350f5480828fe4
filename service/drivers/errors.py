"""Translation of storage exceptions into the project's errors.

Drivers and the unit of work wrap database calls in :func:`translated` so that nothing above
them sees a SQLAlchemy or psycopg exception type.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from sqlalchemy import exc as sa_exc

from costsim_analytics.engines.errors import DatabaseUnavailable, DeadlineExceeded

_SQLITE_TRANSIENT = ("locked", "busy", "unable to open", "disk i/o")
_UNREACHABLE = (
    sa_exc.OperationalError,
    sa_exc.InterfaceError,
    sa_exc.DisconnectionError,
    sa_exc.TimeoutError,  # connection pool exhausted
    psycopg.OperationalError,
    psycopg.InterfaceError,
)


def is_unreachable(exc: BaseException) -> bool:
    """True when ``exc`` means the database is unreachable or dropped us (not a bad query)."""
    if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
        return True
    if isinstance(exc, sa_exc.OperationalError) and isinstance(exc.orig, sqlite3.Error):
        # SQLite raises OperationalError for bugs too ("no such table", "attempt to write a
        # readonly database"); only contention and a missing or broken file mean "retry later".
        return any(mark in str(exc.orig).lower() for mark in _SQLITE_TRANSIENT)
    return isinstance(exc, _UNREACHABLE)


@contextmanager
def translated() -> Iterator[None]:
    """Re-raise connectivity failures as :class:`DatabaseUnavailable`.

    A statement cancelled by its timeout is :class:`DeadlineExceeded`. Other storage errors
    (a broken query, a constraint nobody expected) propagate unchanged:
    they are bugs, and become INTERNAL at the edge.
    """
    try:
        yield
    except Exception as exc:
        if isinstance(getattr(exc, "orig", exc), psycopg.errors.QueryCanceled):
            # The statement timeout the unit of work derives from the call's deadline.
            raise DeadlineExceeded("the call's deadline passed during a database query") from exc
        if is_unreachable(exc):
            raise DatabaseUnavailable(f"database unavailable: {type(exc).__name__}") from exc
        raise
