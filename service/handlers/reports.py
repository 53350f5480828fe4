"""Canary report handlers: streaming query and lookup by run id."""

from __future__ import annotations

from costsim_analytics.engines.errors import NotFound
from costsim_analytics.engines.pagination import Cursor, check_window
from costsim_analytics.engines.reports import (
    CanaryReport,
    GetReport,
    ReportQuery,
    validate_report_filter,
    validate_run_id,
)
from costsim_analytics.handlers.call import Call
from costsim_analytics.handlers.ports import UnitOfWorkFactory
from costsim_analytics.handlers.streams import ResultStream, open_stream

QUERY_KIND = "canary_reports"


def _cursor(report: CanaryReport) -> Cursor:
    return Cursor(report.timestamp, report.id)


class QueryCanaryReportsHandler:
    """Open a keyset-paged stream of canary reports, newest first."""

    def __init__(self, uow_factory: UnitOfWorkFactory, *, max_page_size: int = 10_000) -> None:
        self._uow_factory = uow_factory
        self._max_page_size = max_page_size

    def __call__(self, query: ReportQuery, _call: Call, /) -> ResultStream[CanaryReport]:
        """Validate everything, then open the stream."""
        validate_report_filter(query.filter)
        check_window(query.filter.start_time, query.filter.end_time)
        return open_stream(
            self._uow_factory,
            kind=QUERY_KIND,
            filters=query.filter.as_dict(),
            page_size=query.page_size,
            page_token=query.page_token,
            max_page_size=self._max_page_size,
            query=lambda uow, after, limit: uow.reports.stream(query.filter, after, limit),
            cursor_of=_cursor,
        )


class GetCanaryReportHandler:
    """Look one report up by its run id."""

    def __init__(self, uow_factory: UnitOfWorkFactory) -> None:
        self._uow_factory = uow_factory

    def __call__(self, command: GetReport, _call: Call, /) -> CanaryReport:
        """The report, or NotFound."""
        run_id = command.run_id
        validate_run_id(run_id)
        with self._uow_factory(read_only=True) as uow:
            report = uow.reports.get_by_run_id(run_id)
        if report is None:
            raise NotFound(f"no canary report with run_id {run_id!r}")
        return report
