"""One canary run at a time across replicas.

PostgreSQL: a session-level advisory lock (``pg_try_advisory_lock``) on a connection of its own,
released explicitly or, if the process dies, when that connection closes. SQLite: an exclusive
``flock`` on a file next to the database, which the kernel releases when the process dies.
Both are try-locks retried until a timeout, so the loser learns quickly that it lost.
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

from sqlalchemy import Connection, Engine, func, select
from sqlalchemy.engine import make_url

from costsim_analytics.drivers.database import first_round_trip
from costsim_analytics.drivers.errors import translated

# "costsim" in ASCII: a fixed 64-bit key that no other application is likely to use.
ADVISORY_KEY = 0x636F737473696D
_POLL_S = 0.05


class PostgresAdvisoryLock:
    """A session-level advisory lock on a dedicated connection."""

    def __init__(self, engine: Engine, key: int = ADVISORY_KEY) -> None:
        self._engine = engine
        self._key = key
        self._conn: Connection | None = None

    def acquire(self, timeout_s: float) -> bool:
        """Poll ``pg_try_advisory_lock`` until it succeeds or the timeout passes."""
        with translated():
            deadline = time.monotonic() + timeout_s
            # The first try is the connection's liveness check (the engine skips the pre-ping).
            conn, locked = first_round_trip(self._autocommit, self._try_lock)
            try:
                while not locked:
                    if time.monotonic() >= deadline:
                        conn.close()
                        return False
                    time.sleep(_POLL_S)
                    locked = self._try_lock(conn)
            except BaseException:
                conn.close()
                raise
            self._conn = conn
            return True

    def _autocommit(self) -> Connection:
        return self._engine.connect().execution_options(isolation_level="AUTOCOMMIT")

    def _try_lock(self, conn: Connection) -> bool:
        return bool(conn.execute(select(func.pg_try_advisory_lock(self._key))).scalar_one())

    def release(self) -> None:
        """Unlock and close the connection (closing alone would release it too)."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            with translated():
                conn.execute(select(func.pg_advisory_unlock(self._key)))
        finally:
            conn.close()


class FileLock:
    """An exclusive ``flock`` on a lock file."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._fd: int | None = None

    def acquire(self, timeout_s: float) -> bool:
        """Poll a non-blocking flock until it succeeds or the timeout passes."""
        self._path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    return False
                time.sleep(_POLL_S)
            else:
                self._fd = fd
                return True

    def release(self) -> None:
        """Unlock and close the lock file."""
        fd, self._fd = self._fd, None
        if fd is not None:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


def canary_lock(engine: Engine, fallback_dir: Path) -> PostgresAdvisoryLock | FileLock:
    """The run lock that fits the engine's database."""
    if engine.dialect.name == "postgresql":
        return PostgresAdvisoryLock(engine)
    database = make_url(str(engine.url)).database
    if database and database != ":memory:":
        return FileLock(Path(f"{database}.canary.lock"))
    return FileLock(fallback_dir / "canary.lock")
