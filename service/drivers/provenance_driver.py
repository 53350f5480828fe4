"""Provenance storage: batch insert, keyset streaming and drift aggregates. All SQL, no commit.

On PostgreSQL a batch takes its ids from the table's sequence in one round trip
(``nextval`` over ``generate_series``) and then goes in with ``COPY``: the ids are real,
assigned by the database, in request order, and COPY is the fastest way in (see the measured
numbers in docs/architecture.md). Other backends use a multi-row INSERT ... RETURNING with
SQLAlchemy's ``sort_by_parameter_order`` so ids still come back in request order.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Row,
    Select,
    TableClause,
    and_,
    column,
    delete,
    func,
    insert,
    select,
    table,
    tuple_,
)

from costsim_analytics.drivers import partitions
from costsim_analytics.drivers.database import statement_span
from costsim_analytics.drivers.errors import translated
from costsim_analytics.drivers.models import provenance_table as t
from costsim_analytics.drivers.streaming import stream_rows
from costsim_analytics.engines.drift import DriftStats, DriftStatsQuery
from costsim_analytics.engines.pagination import Cursor
from costsim_analytics.engines.provenance import (
    FILTER_TEXT_FIELDS,
    NewProvenance,
    ProvenanceFilter,
    ProvenanceRecord,
)
from costsim_analytics.engines.retention import ProvenanceRemoval
from costsim_analytics.engines.statistics import interpolate, percentile_rank

# Every column in table order; the model declares them in the order of ProvenanceRecord.
_COLUMNS = tuple(t.c.keys())
_COPY_SQL = f"COPY costsim_provenance ({', '.join(_COLUMNS)}) FROM STDIN"
_NEXTVAL_SQL = (
    "SELECT nextval(pg_get_serial_sequence('costsim_provenance', 'id')) FROM generate_series(1, %s)"
)
# Count, mean, min and max of cost_delta: what both backends aggregate in SQL.
_SUMMARY = tuple(f(t.c.cost_delta) for f in (func.count, func.avg, func.min, func.max))
# COPY writes the payload as its JSON text; the other values are NewProvenance's own.
_COPY_FIELDS = tuple("payload_json" if name == "payload" else name for name in _COLUMNS[1:])
# The PostgreSQL type of each value COPY writes (the payload as text, which jsonb parses): told
# to psycopg up front, so that it does not look up a dumper for every value of every row.
_COPY_TYPE_OF = {
    "id": "int8",
    "v1_cost": "float8",
    "v2_cost": "float8",
    "cost_delta": "float8",
    "runtime_ms": "int4",
    "created_at": "timestamptz",
}
_COPY_TYPES = tuple(_COPY_TYPE_OF.get(name, "text") for name in _COLUMNS)
_copy_values = operator.attrgetter(*_COPY_FIELDS)  # a row's values but its id, in one call


def _where(flt: ProvenanceFilter) -> list[ColumnElement[bool]]:
    clauses: list[ColumnElement[bool]] = [
        t.c[name] == getattr(flt, name) for name in FILTER_TEXT_FIELDS if getattr(flt, name)
    ]
    if flt.tenant_scope is not None:
        clauses.append(t.c.tenant_id.in_(flt.tenant_scope))
    if flt.start_time is not None:
        clauses.append(t.c.created_at >= flt.start_time)
    if flt.end_time is not None:
        clauses.append(t.c.created_at < flt.end_time)
    return clauses


def _record(row: Row[Any]) -> ProvenanceRecord:
    return ProvenanceRecord(**row._mapping)


def stream_statement(flt: ProvenanceFilter, after: Cursor | None, limit: int) -> Select[Any]:
    """The query behind :meth:`stream` (also run by the plan tests and bench/scale.py)."""
    clauses = _where(flt)
    if after is not None:
        clauses.append(tuple_(t.c.created_at, t.c.id) < tuple_(after.timestamp, after.id))
    return (
        select(t)
        .where(and_(True, *clauses))
        .order_by(t.c.created_at.desc(), t.c.id.desc())
        .limit(limit)
    )


class SqlProvenanceDriver:
    """Provenance rows over one SQLAlchemy connection inside the caller's transaction."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def insert_batch(self, rows: Sequence[NewProvenance]) -> list[int]:
        """Insert ``rows`` and return their ids in the same order."""
        with translated():
            if self._conn.dialect.name == "postgresql":
                return self._copy_batch(rows)
            stmt = insert(t).returning(t.c.id, sort_by_parameter_order=True)
            result = self._conn.execute(stmt, [self._params(row) for row in rows])
            return [row_id for (row_id,) in result]

    @staticmethod
    def _params(row: NewProvenance) -> dict[str, Any]:
        return {name: getattr(row, name) for name in _COLUMNS[1:]}

    def _copy_batch(self, rows: Sequence[NewProvenance]) -> list[int]:
        raw = self._conn.connection.driver_connection
        assert raw is not None
        with (
            statement_span(self._conn, "COPY", _COPY_SQL, **{"costsim.rows": len(rows)}),
            raw.cursor() as cur,
        ):
            cur.execute(_NEXTVAL_SQL, (len(rows),))
            ids = sorted(row_id for (row_id,) in cur.fetchall())
            with cur.copy(_COPY_SQL) as copy:
                copy.set_types(_COPY_TYPES)
                for row_id, r in zip(ids, rows, strict=True):
                    copy.write_row((row_id, *_copy_values(r)))
        return ids

    def stream(
        self, flt: ProvenanceFilter, after: Cursor | None, limit: int, chunk_size: int = 500
    ) -> Iterator[list[ProvenanceRecord]]:
        """Yield the matching records newest first, ``chunk_size`` at a time, at most ``limit``.

        The result is read through a server-side cursor and closed when the generator is
        closed, so an abandoned stream stops the database work.
        """
        return stream_rows(
            self._conn,
            stream_statement(flt, after, limit),
            limit=limit,
            chunk_size=chunk_size,
            convert=_record,
        )

    def sample_candidates(self, since: datetime, limit: int) -> list[int]:
        """Ids of the newest ``limit`` successful records since ``since`` with a plan input.

        Ascending, so that a seeded choice among them is reproducible; bounded, so that one
        canary run never loads every id of a busy week.
        """
        stmt = (
            select(t.c.id)
            .where(
                t.c.created_at >= since,
                t.c.payload["status"].as_string() == "success",
                t.c.payload["input"].is_not(None),
            )
            .order_by(t.c.created_at.desc(), t.c.id.desc())
            .limit(limit)
        )
        with translated():
            return sorted(self._conn.execute(stmt).scalars())

    def plan_inputs(self, ids: Sequence[int], chunk_size: int = 1000) -> dict[int, Any]:
        """``payload.input`` of the given records, by id."""
        found: dict[int, Any] = {}
        for start in range(0, len(ids), chunk_size):
            chunk = list(ids[start : start + chunk_size])
            stmt = select(t.c.id, t.c.payload["input"]).where(t.c.id.in_(chunk))
            with translated():
                found.update({row_id: value for row_id, value in self._conn.execute(stmt)})
        return found

    def remove_before(self, cutoff: datetime, *, dry_run: bool = False) -> ProvenanceRemoval:
        """Remove provenance older than ``cutoff``: (dropped partitions with rows, rows deleted).

        PostgreSQL drops whole monthly partitions that end at or before the cutoff and deletes
        old rows from the default partition; other backends delete the rows. A dry run counts.
        """
        target: TableClause = t
        dropped: list[tuple[str, int]] = []
        deferred: list[str] = []
        if partitions.is_partitioned(self._conn):
            doomed = [p for p in partitions.list_partitions(self._conn) if p.end <= cutoff]
            if dry_run:
                dropped = [(p.name, self._count(table(p.name))) for p in doomed]
            else:
                dropped, deferred = partitions.drop_partitions_before(self._conn, cutoff)
            target = table(partitions.DEFAULT_PARTITION, column("created_at"))
        old = target.c.created_at < cutoff
        if dry_run:
            rows = self._count(target, old)
        else:
            with translated():
                rows = int(self._conn.execute(delete(target).where(old)).rowcount)
        return ProvenanceRemoval(tuple(dropped), rows, tuple(deferred))

    def _count(self, target: TableClause, where: ColumnElement[bool] | None = None) -> int:
        stmt = select(func.count()).select_from(target)
        if where is not None:
            stmt = stmt.where(where)
        with translated():
            return int(self._conn.execute(stmt).scalar_one())

    def drift_stats(self, query: DriftStatsQuery) -> DriftStats:
        """Aggregate ``cost_delta`` over the matching records (see engines/drift.py)."""
        flt = ProvenanceFilter(
            query.tenant_id,
            query.variant_slug,
            start_time=query.start_time,
            end_time=query.end_time,
            tenant_scope=query.tenant_scope,
        )
        where = and_(t.c.cost_delta.is_not(None), *_where(flt))
        d = t.c.cost_delta
        with translated():
            if self._conn.dialect.name == "postgresql":
                percentiles = (func.percentile_cont(q).within_group(d) for q in (0.5, 0.9))
                stmt = select(*_SUMMARY, func.stddev_samp(d), *percentiles).where(where)
                row = self._conn.execute(stmt).one()
                total = int(row[0])
                if total == 0:
                    return DriftStats()
                return DriftStats(total, *(float(v or 0.0) for v in row[1:]))
            return self._portable_stats(where)

    def _portable_stats(self, where: ColumnElement[bool]) -> DriftStats:
        """Exact statistics with plain SQL: two passes for the deviation, ranks for percentiles."""
        d = t.c.cost_delta
        total, mean, low, high = self._conn.execute(select(*_SUMMARY).where(where)).one()
        if not total:
            return DriftStats()
        squares = self._conn.execute(
            select(func.sum((d - mean) * (d - mean))).where(where)
        ).scalar_one()
        stddev = math.sqrt(squares / (total - 1)) if total > 1 else 0.0

        def pct(q: float) -> float:
            lower, weight = percentile_rank(q, total)
            values = list(
                self._conn.execute(
                    select(d).where(where).order_by(d).limit(2).offset(lower)
                ).scalars()
            )
            return interpolate(values[0], values[-1], weight)

        return DriftStats(
            int(total), float(mean), float(low), float(high), stddev, pct(50), pct(90)
        )
