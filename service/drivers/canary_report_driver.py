"""Canary report storage: write one, get one, stream many. All SQL, no commit."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Row,
    Select,
    and_,
    delete,
    insert,
    select,
    tuple_,
)
from sqlalchemy import exc as sa_exc

from costsim_analytics.drivers.errors import translated
from costsim_analytics.drivers.models import reports_table as t
from costsim_analytics.drivers.streaming import stream_rows
from costsim_analytics.engines.errors import AlreadyExists
from costsim_analytics.engines.golden.results import golden_from_json, golden_to_json
from costsim_analytics.engines.pagination import Cursor
from costsim_analytics.engines.reports import (
    CanaryReport,
    ReportFilter,
    details_from_json,
    details_to_json,
)

# Every column, in the table's order (drivers/models.py: CanaryReportRow).
_COLUMNS = tuple(t.c.keys())
_SELECT_COLUMNS = [t.c[name] for name in _COLUMNS]


# Columns stored as they are in the report (the others hold JSON).
_PLAIN = tuple(name for name in _COLUMNS if not name.endswith("_json"))
# Where each column is in a selected row: rows are read by position (a stream reads
# thousands; by name each lookup goes through the row's mapping).
_PLAIN_AT = tuple((name, _COLUMNS.index(name)) for name in _PLAIN)
_REASONS_AT, _PATHS_AT, _GOLDEN_AT, _DETAILS_AT = (
    _COLUMNS.index(name)
    for name in (
        "failure_reasons_json",
        "artifact_paths_json",
        "golden_comparison_json",
        "details_json",
    )
)


def _report(row: Row[Any]) -> CanaryReport:
    return CanaryReport(
        **{name: row[at] for name, at in _PLAIN_AT},
        failure_reasons=tuple(row[_REASONS_AT]),
        artifact_paths=tuple(row[_PATHS_AT]),
        golden_comparison=golden_from_json(row[_GOLDEN_AT]),
        **details_from_json(row[_DETAILS_AT]),
    )


def _where(flt: ReportFilter) -> list[ColumnElement[bool]]:
    clauses: list[ColumnElement[bool]] = []
    if flt.status:
        clauses.append(t.c.status == flt.status)
    if flt.passed is not None:
        # "passed = false", not "passed IS false": the partial index is declared on the former.
        clauses.append(t.c.passed == flt.passed)
    if flt.start_time is not None:
        clauses.append(t.c.timestamp >= flt.start_time)
    if flt.end_time is not None:
        clauses.append(t.c.timestamp < flt.end_time)
    return clauses


def stream_statement(flt: ReportFilter, after: Cursor | None, limit: int) -> Select[Any]:
    """The query behind :meth:`stream` (also run by the plan tests and bench/scale.py)."""
    clauses = _where(flt)
    if after is not None:
        clauses.append(tuple_(t.c.timestamp, t.c.id) < tuple_(after.timestamp, after.id))
    return (
        select(*_SELECT_COLUMNS)
        .where(and_(True, *clauses))
        .order_by(t.c.timestamp.desc(), t.c.id.desc())
        .limit(limit)
    )


class SqlCanaryReportDriver:
    """Canary report rows over one SQLAlchemy connection inside the caller's transaction."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def add(self, report: CanaryReport, now: datetime | None = None) -> int:
        """Insert a report and return its id.

        Raises:
            AlreadyExists: a report with this run_id exists.

        """
        values = {
            name: getattr(report, name) for name in _PLAIN if name not in ("id", "created_at")
        }
        values.update(
            failure_reasons_json=list(report.failure_reasons),
            artifact_paths_json=list(report.artifact_paths),
            golden_comparison_json=golden_to_json(report.golden_comparison),
            created_at=now or datetime.now(UTC),
            details_json=details_to_json(report),
        )
        try:
            with translated():
                return int(self._conn.execute(insert(t).returning(t.c.id), values).scalar_one())
        except sa_exc.IntegrityError as exc:
            raise AlreadyExists(f"a canary report with run_id {report.run_id!r} exists") from exc

    def get_by_run_id(self, run_id: str) -> CanaryReport | None:
        """The report of ``run_id``, or None."""
        with translated():
            row = self._conn.execute(select(*_SELECT_COLUMNS).where(t.c.run_id == run_id)).first()
        return None if row is None else _report(row)

    def run_ids_before(self, cutoff: datetime, limit: int = 1000) -> list[str]:
        """Run ids of up to ``limit`` reports whose timestamp is older than ``cutoff``."""
        stmt = (
            select(t.c.run_id)
            .where(t.c.timestamp < cutoff)
            .order_by(t.c.timestamp, t.c.id)
            .limit(limit)
        )
        with translated():
            return list(self._conn.execute(stmt).scalars())

    def delete_runs(self, run_ids: Sequence[str]) -> int:
        """Delete the reports of these run ids; return how many were deleted."""
        if not run_ids:
            return 0
        with translated():
            return int(self._conn.execute(delete(t).where(t.c.run_id.in_(run_ids))).rowcount)

    def stream(
        self, flt: ReportFilter, after: Cursor | None, limit: int, chunk_size: int = 500
    ) -> Iterator[list[CanaryReport]]:
        """Yield matching reports newest first (by timestamp, then id), at most ``limit``."""
        return stream_rows(
            self._conn,
            stream_statement(flt, after, limit),
            limit=limit,
            chunk_size=chunk_size,
            convert=_report,
        )
