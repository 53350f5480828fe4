"""Monthly partitions of ``costsim_provenance`` on PostgreSQL.

The table is ``PARTITION BY RANGE (created_at)``, one partition per calendar month (UTC) named
``costsim_provenance_pYYYYMM``, plus a ``costsim_provenance_default`` partition as a safety net
so that an insert never fails for want of a partition. Partitions are created ahead of time by
``costsim-analytics migrate``, at server start and once an hour while it runs; retention drops
whole partitions, which frees their space at once (no DELETE, no VACUUM).

SQLite keeps a plain table: every function here is a no-op there.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from psycopg.errors import LockNotAvailable
from sqlalchemy import Connection, text
from sqlalchemy import exc as sa_exc

from costsim_analytics.drivers.errors import translated

log = logging.getLogger(__name__)

PARENT = "costsim_provenance"
DEFAULT_PARTITION = f"{PARENT}_default"
MONTHS_AHEAD = 3
_NAME = re.compile(rf"^{PARENT}_p(\d{{4}})(\d{{2}})$")


@dataclass(frozen=True, slots=True)
class Partition:
    """One monthly partition: rows with ``start <= created_at < end``."""

    name: str
    start: datetime
    end: datetime


def month_start(moment: datetime) -> datetime:
    """The first instant (UTC) of the month containing ``moment``."""
    moment = moment.astimezone(UTC)
    return datetime(moment.year, moment.month, 1, tzinfo=UTC)


def add_months(month: datetime, count: int) -> datetime:
    """The first instant of the month ``count`` months after ``month`` (a month start)."""
    index = month.year * 12 + month.month - 1 + count
    return datetime(index // 12, index % 12 + 1, 1, tzinfo=UTC)


def partition_for(month: datetime) -> Partition:
    """The partition that holds ``month``."""
    start = month_start(month)
    return Partition(f"{PARENT}_p{start:%Y%m}", start, add_months(start, 1))


def is_partitioned(conn: Connection) -> bool:
    """True when ``costsim_provenance`` is a partitioned table (PostgreSQL after 0004)."""
    if conn.dialect.name != "postgresql":
        return False
    with translated():
        kind = conn.execute(
            text("SELECT relkind FROM pg_class WHERE oid = to_regclass(:name)"), {"name": PARENT}
        ).scalar()
    return kind == "p"


def create_partition(conn: Connection, partition: Partition) -> None:
    """Create one monthly partition if it does not exist yet (idempotent)."""
    start, end = partition.start.isoformat(), partition.end.isoformat()
    with translated():
        conn.execute(
            text(
                f'CREATE TABLE IF NOT EXISTS "{partition.name}" PARTITION OF {PARENT} '
                f"FOR VALUES FROM ('{start}') TO ('{end}')"
            )
        )


def ensure_partitions(
    conn: Connection, now: datetime, months_ahead: int = MONTHS_AHEAD
) -> list[str]:
    """Create the partitions of this month and the next ``months_ahead``; return the new ones."""
    return ensure_range(conn, now, add_months(month_start(now), months_ahead))


def ensure_range(conn: Connection, start: datetime, end: datetime) -> list[str]:
    """Create every monthly partition from ``start``'s month to ``end``'s (for backfills)."""
    if not is_partitioned(conn):
        return []
    existing = {p.name for p in list_partitions(conn)}
    created, month = [], month_start(start)
    while month <= end:
        partition = partition_for(month)
        if partition.name not in existing:
            create_partition(conn, partition)
            created.append(partition.name)
        month = add_months(month, 1)
    return created


def list_partitions(conn: Connection) -> list[Partition]:
    """The monthly partitions, oldest first (the default partition is not listed)."""
    if not is_partitioned(conn):
        return []
    with translated():
        names = conn.execute(
            text(
                "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                "WHERE i.inhparent = to_regclass(:parent)"
            ),
            {"parent": PARENT},
        ).scalars()
    months = [datetime(int(m[1]), int(m[2]), 1, tzinfo=UTC) for m in map(_NAME.match, names) if m]
    return [partition_for(month) for month in sorted(months)]


# DROP TABLE of a partition waits for every reader of it (an open stream), and while it waits
# every writer of the table queues behind it. So it waits at most this long, a few times with a
# pause between (writers get through meanwhile), then leaves the partition for the next pass.
DROP_LOCK_TIMEOUT_MS = 500
DROP_ATTEMPTS = 3
DROP_RETRY_PAUSE_S = 1.0


def _drop(conn: Connection, name: str) -> int | None:
    """Count and drop one partition in a savepoint; None when its lock was not had in time."""
    with translated():
        savepoint = conn.begin_nested()
        try:
            conn.execute(text(f"SET LOCAL lock_timeout = {int(DROP_LOCK_TIMEOUT_MS)}"))
            rows = conn.execute(text(f'SELECT count(*) FROM "{name}"')).scalar_one()
            conn.execute(text(f'DROP TABLE "{name}"'))
        except sa_exc.OperationalError as exc:
            savepoint.rollback()
            if isinstance(exc.orig, LockNotAvailable):
                return None
            raise
        savepoint.commit()
    return int(rows)


def drop_partitions_before(
    conn: Connection, cutoff: datetime
) -> tuple[list[tuple[str, int]], list[str]]:
    """Drop the monthly partitions that end at or before ``cutoff``.

    Returns (name, rows) of each dropped partition, and the names of those deferred because a
    reader held them through every attempt.
    """
    dropped, deferred = [], []
    for partition in list_partitions(conn):
        if partition.end > cutoff:
            continue
        for attempt in range(DROP_ATTEMPTS):
            if attempt:
                time.sleep(DROP_RETRY_PAUSE_S)
            rows = _drop(conn, partition.name)
            if rows is not None:
                dropped.append((partition.name, rows))
                break
        else:
            log.warning("retention: %s is in use; left for the next pass", partition.name)
            deferred.append(partition.name)
    return dropped, deferred


class SqlPartitionDriver:
    """Partition upkeep inside the caller's transaction (the server's hourly task, ``migrate``)."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def ensure(self, now: datetime) -> list[str]:
        """Create this month's and the coming months' partitions; return the new ones."""
        return ensure_partitions(self._conn, now)
