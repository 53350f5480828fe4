"""The side port's routes: dashboard pages, ``/metrics``, ``/healthz`` and ``/readyz``.

Every page reads through the registered read-only handlers (the same ones the RPCs use), in
the server's worker pool, and renders HTML with the pure functions of ``pages`` and
``report_page``. Domain errors map to HTTP statuses by the one table in ``api/errors.py``.
Who may see what is decided by ``access.Access`` before a route runs: pages need the
``reader`` role, ``/metrics`` and the probes follow ``COSTSIM_METRICS_AUTH``.

Routes:
    ``/``                  recent canary reports and their trends (``?status=fail&limit=50``)
    ``/reports/<run_id>``  one report (the run id percent-encoded as one path segment), with
                           where its drift comes from (``?group_by=``, ``?top=``)
    ``/reports/<run_id>/drift``  that explanation alone (``?group_by=skill&top=20``)
    ``/golden``            golden dataset versions
    ``/metrics``           Prometheus text format
    ``/healthz``           liveness: 200 while the process answers
    ``/readyz``            readiness: 200 while the gRPC health status is SERVING, else 503;
                           then one line per read replica (its lag, whether it is used)
    ``/login``             GET: the sign-in form; POST ``token=<JWT>``: the session cookie
    ``/logout``            GET or POST: clears the session cookie
"""

from __future__ import annotations

import asyncio
import logging
import math
import uuid
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import replace
from typing import TypeVar

from costsim_analytics.api.admission import Admission, AdmissionLimits, release_when_done, submit
from costsim_analytics.api.dashboard.access import LOGIN, LOGOUT, Access
from costsim_analytics.api.dashboard.drift_page import (
    REPORT_TOP,
    drift_page,
    drift_section,
    unexplained,
)
from costsim_analytics.api.dashboard.httpserver import Request, Response, plain
from costsim_analytics.api.dashboard.markup import Markup
from costsim_analytics.api.dashboard.pages import error_page, golden_page, reports_page
from costsim_analytics.api.dashboard.report_page import report_page
from costsim_analytics.api.errors import http_status_of
from costsim_analytics.api.metrics import CONTENT_TYPE, ServiceMetrics
from costsim_analytics.engines.canary.explain import MAX_TOP, ExplainRun, RunNotExplainable
from costsim_analytics.engines.errors import CostsimError, InvalidArgument, ResourceExhausted
from costsim_analytics.engines.golden.commands import ListGoldenDatasets
from costsim_analytics.engines.reports import CanaryReport, GetReport, ReportFilter, ReportQuery
from costsim_analytics.handlers.call import Call
from costsim_analytics.handlers.registry import (
    OP_CANARY_EXPLAIN,
    OP_CANARY_REPORT,
    OP_CANARY_REPORTS,
    OP_GOLDEN_LIST,
    OperationRegistry,
)

log = logging.getLogger(__name__)

T = TypeVar("T")
DEFAULT_LIMIT = 50
MAX_LIMIT = 500
# The golden page names the latest report that used each version, among this many.
GOLDEN_REPORT_WINDOW = 200
REPORT_PREFIX = "/reports/"
REPORT_ROUTE = REPORT_PREFIX + "{run_id}"
DRIFT_SUFFIX = "/drift"
DRIFT_ROUTE = REPORT_ROUTE + DRIFT_SUFFIX
DRIFT_TOP = 20
ROUTES = frozenset({"/healthz", "/readyz", "/metrics", "/", "/golden", LOGIN, LOGOUT})
# The only paths that take a POST (HttpServer reads a bounded body for them alone).
POST_PATHS = frozenset({LOGIN, LOGOUT})
# The admission key of every page: the dashboard counts as one principal.
DASHBOARD_PRINCIPAL = "dashboard"


def html_response(status: int, text: str) -> Response:
    """An HTML page."""
    return Response(status, text.encode("utf-8"))


def _route_of(path: str) -> str:
    """The route name of a path (its metrics label and audit method); ``other`` for none."""
    if path in ROUTES:
        return path
    if path.startswith(REPORT_PREFIX) and len(path) > len(REPORT_PREFIX):
        if path.endswith(DRIFT_SUFFIX) and len(path) > len(REPORT_PREFIX + DRIFT_SUFFIX):
            return DRIFT_ROUTE
        return REPORT_ROUTE
    return "other"


def _limit(raw: str) -> int:
    if not raw:
        return DEFAULT_LIMIT
    # ASCII digits only: str.isdigit() is true for "²", which int() refuses.
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 6 or not 1 <= int(raw) <= MAX_LIMIT:
        raise InvalidArgument.field("limit", f"must be a whole number from 1 to {MAX_LIMIT}")
    return int(raw)


def _top(raw: str, default: int) -> int:
    if not raw:
        return default
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 6 or not 1 <= int(raw) <= MAX_TOP:
        raise InvalidArgument.field("top", f"must be a whole number from 1 to {MAX_TOP}")
    return int(raw)


class Dashboard:
    """The app served on the side port (see the module docstring for its routes)."""

    def __init__(
        self,
        operations: OperationRegistry,
        executor: Executor,
        metrics: ServiceMetrics,
        ready: Callable[[], bool],
        access: Access | None = None,
        admission: Admission | None = None,
        *,
        detail: Callable[[], list[str]] | None = None,
    ) -> None:
        self._operations = operations
        self._detail = detail
        self._executor = executor
        # Pages are calls of the "unary" class (api/admission.py), all of them one principal's.
        self._admission = admission or Admission(AdmissionLimits(), lambda _c, _r: None)
        self._metrics = metrics
        self._ready = ready
        self._access = access or Access.open(metrics)

    async def __call__(self, request: Request) -> Response:
        """Route, answer, count."""
        route, response = await self._dispatch(request)
        self._metrics.http_requests.labels(route=route, code=str(response.status)).inc()
        return response

    async def _dispatch(self, request: Request) -> tuple[str, Response]:
        path = request.path
        route = _route_of(path)
        if route in POST_PATHS:
            return route, self._access.session(request)
        refused = self._access.refusal(request, route)
        if refused is not None:
            return route, refused
        if route == "/healthz":
            return route, plain(200, "ok\n")
        if route == "/readyz":
            lines = "".join(f"{line}\n" for line in self._detail()) if self._detail else ""
            if self._ready():
                return route, plain(200, f"ready\n{lines}")
            return route, plain(503, f"not ready: the database probe is failing\n{lines}")
        if route == "/metrics":
            return route, Response(200, self._metrics.exposition(), CONTENT_TYPE)
        if route == "/":
            return route, await self._page(lambda: self._reports(request))
        if route == REPORT_ROUTE:
            run_id = path.removeprefix(REPORT_PREFIX)
            return route, await self._page(lambda: self._report(run_id, request))
        if route == DRIFT_ROUTE:
            run_id = path.removeprefix(REPORT_PREFIX).removesuffix(DRIFT_SUFFIX)
            return route, await self._page(lambda: self._drift_page(run_id, request))
        if route == "/golden":
            return route, await self._page(self._golden)
        return route, html_response(404, error_page(404, "Not found", f"No page at {path}."))

    async def _page(self, render: Callable[[], str]) -> Response:
        """Run ``render`` in the worker pool; a domain error becomes its HTTP status.

        Over the admission bound the page is refused at once: 429 with ``Retry-After``.
        """
        try:
            slot = self._admission.enter("unary", DASHBOARD_PRINCIPAL)
            future = submit(self._executor, render, Call(), DASHBOARD_PRINCIPAL)
            release_when_done(future, slot)
            text = await asyncio.wrap_future(future)
        except CostsimError as exc:
            status, title = http_status_of(exc)
            page = html_response(status, error_page(status, title, exc.message))
            if isinstance(exc, ResourceExhausted) and exc.retry_after_s is not None:
                retry = str(max(1, math.ceil(exc.retry_after_s)))
                return replace(page, headers=(("Retry-After", retry),))
            return page
        except Exception:
            error_id = uuid.uuid4().hex[:12]
            log.exception("dashboard page failed: error_id=%s", error_id)
            message = f"internal error (error id {error_id}); the server log has the details"
            return html_response(500, error_page(500, "Internal error", message))
        return html_response(200, text)

    def _recent(self, status: str, limit: int) -> list[CanaryReport]:
        stream = self._operations.get(OP_CANARY_REPORTS)(
            ReportQuery(filter=ReportFilter(status=status), page_size=limit), Call()
        )
        return [report for report, _token in stream]

    def _reports(self, request: Request) -> str:
        status, limit = request.arg("status"), _limit(request.arg("limit"))
        return reports_page(self._recent(status, limit), status=status, limit=limit)

    def _report(self, run_id: str, request: Request) -> str:
        report = self._operations.get(OP_CANARY_REPORT)(GetReport(run_id), Call())
        command = self._explain_command(run_id, request, REPORT_TOP)
        return report_page(report, self._drift(command, run_link=True))

    def _drift_page(self, run_id: str, request: Request) -> str:
        command = self._explain_command(run_id, request, DRIFT_TOP)
        return drift_page(run_id, self._drift(command))

    @staticmethod
    def _explain_command(run_id: str, request: Request, top: int) -> ExplainRun:
        # A bad value is refused (400, naming the field) before any work.
        return ExplainRun(run_id, request.arg("group_by"), _top(request.arg("top"), top))

    def _drift(self, command: ExplainRun, *, run_link: bool = False) -> Markup:
        """The explanation's section, or the sentence saying why the run has none."""
        try:
            explanation = self._operations.get(OP_CANARY_EXPLAIN)(command, Call())
        except RunNotExplainable as exc:
            return unexplained(exc.message)
        return drift_section(explanation, run_link=run_link)

    def _golden(self) -> str:
        datasets = self._operations.get(OP_GOLDEN_LIST)(ListGoldenDatasets(), Call())
        return golden_page(datasets, self._recent("", GOLDEN_REPORT_WINDOW))
