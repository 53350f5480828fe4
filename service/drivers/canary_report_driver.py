"""Canary report storage: write one, get one, stream many. All SQL, no commit."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, Connection, Select, and_, insert, select, tuple_
from sqlalchemy import exc as sa_exc

from costsim_analytics.drivers.errors import translated
from costsim_analytics.drivers.models import reports_table as t
from costsim_analytics.engines.errors import AlreadyExists
from costsim_analytics.engines.pagination import Cursor
from costsim_analytics.engines.reports import (
    CanaryReport,
    ReportFilter,
    details_from_json,
    details_to_json,
)

_COLUMNS = (
    "id",
    "run_id",
    "timestamp",
    "status",
    "total_samples",
    "matching_samples",
    "minor_drift_samples",
    "major_drift_samples",
    "median_cost_diff",
    "p90_cost_diff",
    "kl_divergence",
    "outlier_count",
    "passed",
    "failure_reasons_json",
    "artifact_paths_json",
    "golden_comparison_json",
    "created_at",
    "baseline_model",
    "candidate_model",
    "details_json",
)
_SELECT_COLUMNS = [t.c[name] for name in _COLUMNS]


def _report(row: Sequence[Any]) -> CanaryReport:
    return CanaryReport(
        id=row[0],
        run_id=row[1],
        timestamp=row[2],
        status=row[3],
        total_samples=row[4],
        matching_samples=row[5],
        minor_drift_samples=row[6],
        major_drift_samples=row[7],
        median_cost_diff=row[8],
        p90_cost_diff=row[9],
        kl_divergence=row[10],
        outlier_count=row[11],
        passed=row[12],
        failure_reasons=tuple(row[13]),
        artifact_paths=tuple(row[14]),
        golden_comparison=row[15],
        created_at=row[16],
        baseline_model=row[17],
        candidate_model=row[18],
        **details_from_json(row[19]),
    )


def _where(flt: ReportFilter) -> list[ColumnElement[bool]]:
    clauses: list[ColumnElement[bool]] = []
    if flt.status:
        clauses.append(t.c.status == flt.status)
    if flt.passed is not None:
        clauses.append(t.c.passed.is_(flt.passed))
    if flt.start_time is not None:
        clauses.append(t.c.timestamp >= flt.start_time)
    if flt.end_time is not None:
        clauses.append(t.c.timestamp < flt.end_time)
    return clauses


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
            "run_id": report.run_id,
            "timestamp": report.timestamp,
            "status": report.status,
            "total_samples": report.total_samples,
            "matching_samples": report.matching_samples,
            "minor_drift_samples": report.minor_drift_samples,
            "major_drift_samples": report.major_drift_samples,
            "median_cost_diff": report.median_cost_diff,
            "p90_cost_diff": report.p90_cost_diff,
            "kl_divergence": report.kl_divergence,
            "outlier_count": report.outlier_count,
            "passed": report.passed,
            "failure_reasons_json": list(report.failure_reasons),
            "artifact_paths_json": list(report.artifact_paths),
            "golden_comparison_json": report.golden_comparison,
            "created_at": now or datetime.now(UTC),
            "baseline_model": report.baseline_model,
            "candidate_model": report.candidate_model,
            "details_json": details_to_json(report),
        }
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

    def stream(
        self, flt: ReportFilter, after: Cursor | None, limit: int, chunk_size: int = 500
    ) -> Iterator[list[CanaryReport]]:
        """Yield matching reports newest first (by timestamp, then id), at most ``limit``."""
        clauses = _where(flt)
        if after is not None:
            clauses.append(tuple_(t.c.timestamp, t.c.id) < tuple_(after.timestamp, after.id))
        stmt: Select[Any] = (
            select(*_SELECT_COLUMNS)
            .where(and_(True, *clauses))
            .order_by(t.c.timestamp.desc(), t.c.id.desc())
            .limit(limit)
        )
        with translated():
            result = self._conn.execution_options(
                stream_results=True, yield_per=chunk_size
            ).execute(stmt)
        try:
            while True:
                with translated():
                    part = result.fetchmany(chunk_size)
                if not part:
                    return
                yield [_report(row) for row in part]
        finally:
            result.close()
