"""Prometheus metrics of one server process: RPCs, rows written, canary outcomes, readiness.

RPCs are measured by a grpc.aio server interceptor, so every method of every service on the
server is covered (the analytics service, health and reflection), unary and streaming alike,
under the names and labels of go-grpc-prometheus: ``grpc_server_started_total``,
``grpc_server_handled_total`` and ``grpc_server_handling_seconds`` by ``grpc_service``,
``grpc_method``, ``grpc_type`` and (when handled) ``grpc_code``. The domain counters observe
the operation results (domain objects, not protos) through :meth:`ServiceMetrics.middleware`,
applied to the registry once in ``bootstrap.py``.

Example:
    >>> metrics = ServiceMetrics()
    >>> metrics.canary_runs.labels(status="pass").inc()
    >>> b'costsim_canary_runs_total{status="pass"} 1.0' in metrics.exposition()
    True

"""

from __future__ import annotations

import asyncio
import inspect
import math
import os
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import grpc
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.gc_collector import GCCollector
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from costsim_analytics.api.errors import code_of
from costsim_analytics.api.intercepting import (
    Method,
    WrappingInterceptor,
    behavior_of,
    kind_of,
    rebuilt,
    writing,
)
from costsim_analytics.engines.canary.command import RunCanaryResult
from costsim_analytics.engines.errors import CostsimError, WorkBoundExceeded
from costsim_analytics.engines.limits import (
    ARTIFACT_BYTES,
    PLAN_BYTES,
    PLAN_STEPS,
    RECORDS,
    SAMPLES,
)
from costsim_analytics.engines.provenance import WriteBatchResult
from costsim_analytics.engines.reports import CANARY_STATUSES
from costsim_analytics.handlers.call import Call
from costsim_analytics.handlers.registry import (
    OP_CANARY_RUN,
    OP_GOLDEN_COMPARE,
    OP_GOLDEN_CREATE,
    OP_GOLDEN_PROMOTE,
    OP_PROVENANCE_BATCH,
    Handler,
    Middleware,
    Operation,
)

# The classic text format, which every Prometheus version scrapes (and generate_latest writes).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Seconds; the long tail is for RunCanary over large sample sets.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 120)
_CODE_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}
_RPC_LABELS = ("grpc_service", "grpc_method", "grpc_type")
C = TypeVar("C")
R = TypeVar("R")
# The operations a work bound can refuse, by the RPC method that runs them, with their bounds
# (engines/limits.py): costsim_work_refusals_total{method, bound} starts at 0 for each.
_BOUNDED: dict[str, tuple[str, tuple[str, ...]]] = {
    OP_PROVENANCE_BATCH.name: ("WriteProvenanceBatch", (RECORDS,)),
    OP_CANARY_RUN.name: ("RunCanary", (SAMPLES, PLAN_BYTES, PLAN_STEPS, ARTIFACT_BYTES)),
    OP_GOLDEN_CREATE.name: ("CreateGoldenDataset", (SAMPLES, PLAN_BYTES, PLAN_STEPS)),
    OP_GOLDEN_PROMOTE.name: ("PromoteCanaryRun", (SAMPLES,)),
    OP_GOLDEN_COMPARE.name: ("CompareGolden", (SAMPLES,)),
}

if TYPE_CHECKING:  # generic in grpc-stubs only
    _Handler = grpc.RpcMethodHandler[Any, Any]
else:
    _Handler = grpc.RpcMethodHandler


class _ReplicaState(Protocol):
    @property
    def lag_s(self) -> float | None: ...


class _ReplicaStatus(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def state(self) -> _ReplicaState: ...
    @property
    def usable(self) -> bool: ...


class ServiceMetrics:
    """The metrics of one server, in their own registry (nothing global, nothing at import).

    Under ``serve --processes N`` (``api/supervisor.py``) each process writes its values to the
    ``multiprocess_dir`` its parent made (``PROMETHEUS_MULTIPROC_DIR``, read by
    prometheus-client when it is imported), and :meth:`exposition` in any of them is the sum
    of all: counters and histograms add up (a dead process's counts stay), gauges combine by
    their ``multiprocess_mode`` (live processes only), and ``costsim_worker_start_time_seconds``
    has one series per live process, by ``pid``. The per-process collectors (``process_*``,
    ``python_gc_*``) are left out there: one process's figures are not the server's.
    """

    def __init__(self, multiprocess_dir: str | None = None) -> None:
        self.registry = CollectorRegistry()
        if multiprocess_dir is None:
            multiprocess_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None
        self._tracked: list[tuple[Gauge, Callable[[], float]]] = []
        self._exposed = self.registry
        if multiprocess_dir is None:
            for collector in (ProcessCollector, PlatformCollector, GCCollector):
                collector(registry=self.registry)
        else:
            self._exposed = CollectorRegistry()
            MultiProcessCollector(self._exposed, path=multiprocess_dir)  # type: ignore[no-untyped-call]
        self.multiprocess = multiprocess_dir is not None
        self.worker_start_time = Gauge(
            "costsim_worker_start_time_seconds",
            "Start of this server process, Unix time (one series per process, by pid, under"
            " serve --processes: a restart shows as a new pid).",
            registry=self.registry,
            multiprocess_mode="liveall",
        )
        self.worker_start_time.set(time.time())
        self.rpc_started = Counter(
            "grpc_server_started",
            "RPCs started on the server.",
            _RPC_LABELS,
            registry=self.registry,
        )
        self.rpc_handled = Counter(
            "grpc_server_handled",
            "RPCs completed on the server, by status code.",
            (*_RPC_LABELS, "grpc_code"),
            registry=self.registry,
        )
        self.rpc_seconds = Histogram(
            "grpc_server_handling_seconds",
            "Time from the start of an RPC to its status, by status code.",
            (*_RPC_LABELS, "grpc_code"),
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.provenance_rows = Counter(
            "costsim_provenance_rows_written",
            "Provenance rows written by WriteProvenanceBatch (replays write none).",
            registry=self.registry,
        )
        self.canary_runs = Counter(
            "costsim_canary_runs",
            "Canary runs completed by this process, by report status (replays not counted).",
            ("status",),
            registry=self.registry,
        )
        for status in CANARY_STATUSES:
            self.canary_runs.labels(status=status)
        self.serving = Gauge(
            "costsim_serving",
            "1 while the database probe passes (the gRPC health status is SERVING), else 0"
            " (under serve --processes: 1 while it passes in every process).",
            registry=self.registry,
            multiprocess_mode="livemin",
        )
        self.auth_failures = Counter(
            "costsim_auth_failures",
            "Calls refused by authentication or authorization, by ErrorInfo reason.",
            ("reason",),
            registry=self.registry,
        )
        self.work_refusals = Counter(
            "costsim_work_refusals",
            "Calls refused for asking more work than a bound allows, by method and bound.",
            ("method", "bound"),
            registry=self.registry,
        )
        for method, bounds in _BOUNDED.values():
            for bound in bounds:
                self.work_refusals.labels(method=method, bound=bound)
        self.admission_refusals = Counter(
            "costsim_admission_refusals",
            "Calls refused RESOURCE_EXHAUSTED by admission control (and streams cut for a slow"
            " reader), by class of call and reason.",
            ("call_class", "reason"),
            registry=self.registry,
        )
        self.calls_in_flight = Gauge(
            "costsim_calls_in_flight",
            "Calls admitted and not yet ended, by class of call.",
            ("call_class",),
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        self.http_requests = Counter(
            "costsim_http_requests",
            "Requests to the HTTP side port, by route and status.",
            ("route", "code"),
            registry=self.registry,
        )

        self.database_reads = Counter(
            "costsim_database_reads",
            "Read transactions of the operations that may use a read replica, by where they"
            " ran (primary or replica).",
            ("target",),
            registry=self.registry,
        )
        self.replica_lag = Gauge(
            "costsim_replica_lag_seconds",
            "Replay lag of each read replica at its last probe (NaN: unknown or unreachable).",
            ("replica",),
            registry=self.registry,
            multiprocess_mode="livemax",
        )
        self.replica_usable = Gauge(
            "costsim_replica_usable",
            "1 while a read replica answers reads (reachable, a standby, lag within bounds).",
            ("replica",),
            registry=self.registry,
            multiprocess_mode="livemin",
        )

    def count_read(self, target: str) -> None:
        """Count one read transaction on ``target`` (``primary`` or ``replica``)."""
        self.database_reads.labels(target=target).inc()

    def watch_replicas(
        self, statuses: Callable[[], Sequence[_ReplicaStatus]], names: Sequence[str]
    ) -> None:
        """Export the replicas' lag and usability, read from ``statuses`` at each scrape."""
        for target in ("primary", "replica"):
            self.database_reads.labels(target=target)

        def field(name: str, of: Callable[[_ReplicaStatus], float]) -> Callable[[], float]:
            def value() -> float:
                for status in statuses():
                    if status.name == name:
                        return of(status)
                return math.nan

            return value

        for name in names:
            self.track(
                self.replica_lag.labels(replica=name),
                field(name, lambda s: math.nan if s.state.lag_s is None else s.state.lag_s),
            )
            self.track(
                self.replica_usable.labels(replica=name),
                field(name, lambda s: 1.0 if s.usable else 0.0),
            )

    def exposition(self) -> bytes:
        """The Prometheus text format of every metric (of every process, under --processes)."""
        self.publish()
        return generate_latest(self._exposed)

    def track(self, gauge: Gauge, value: Callable[[], float]) -> None:
        """Make ``gauge`` report ``value()``.

        In one process it is read at each scrape; under --processes the other processes
        cannot call it, so :meth:`publish` (which the server calls every health interval)
        writes it down.
        """
        if self.multiprocess:
            self._tracked.append((gauge, value))
        else:
            gauge.set_function(value)

    def publish(self) -> None:
        """Write the tracked gauges' values down (under --processes; else nothing to do)."""
        for gauge, value in self._tracked:
            gauge.set(value())

    def middleware(self) -> Middleware:
        """Middleware that counts the results of the operations whose outcomes are metrics.

        Also the refusals of the operations a work bound can refuse, by their RPC method (a
        refusal escapes the handler as :class:`WorkBoundExceeded`; it is counted and re-raised).
        """
        observers: dict[str, Callable[[object], None]] = {
            OP_PROVENANCE_BATCH.name: self._rows_written,
            OP_CANARY_RUN.name: self._canary_outcome,
        }

        def wrap(op: Operation[C, R], handler: Handler[C, R]) -> Handler[C, R]:
            observe = observers.get(op.name)
            bounded = _BOUNDED.get(op.name)
            if observe is None and bounded is None:
                return handler
            method = op.name if bounded is None else bounded[0]

            def observed(command: C, call: Call, /) -> R:
                try:
                    result = handler(command, call)
                except WorkBoundExceeded as exc:
                    self.work_refusals.labels(method=method, bound=exc.bound).inc()
                    raise
                if observe is not None:
                    observe(result)
                return result

            return observed

        return wrap

    def _rows_written(self, result: object) -> None:
        if isinstance(result, WriteBatchResult) and not result.replayed:
            self.provenance_rows.inc(len(result.ids))

    def _canary_outcome(self, result: object) -> None:
        if isinstance(result, RunCanaryResult) and not result.replayed:
            self.canary_runs.labels(status=result.report.status).inc()


def code_name(context: grpc.aio.ServicerContext[Any, Any], exc: BaseException | None) -> str:
    """The status code name a call ended with (``exc``: what escaped its handler, if any)."""
    if isinstance(exc, asyncio.CancelledError | GeneratorExit | grpc.aio.InternalError):
        # The client went away, or the deadline passed (InternalError: a message could not be
        # sent, the stream is gone).
        return "CANCELLED"
    code: Any = context.code()
    if isinstance(code, grpc.StatusCode):
        return code.name
    if isinstance(code, int):
        return _CODE_NAMES.get(code, "UNKNOWN")
    if isinstance(exc, CostsimError):  # about to be mapped (api/errors.py): its code
        return _CODE_NAMES.get(code_of(exc), "UNKNOWN")
    # No code set: a normal return is OK; any other exception escaping the handler is UNKNOWN.
    return "OK" if exc is None else "UNKNOWN"


class MetricsInterceptor(WrappingInterceptor):
    """Counts and times every RPC by method and status code, streams until their last message."""

    def __init__(self, metrics: ServiceMetrics) -> None:
        super().__init__()
        self._metrics = metrics

    def wrap(self, method: Method, handler: _Handler) -> _Handler:
        """``handler``, its behaviour wrapped in a measurement."""
        labels = {
            "grpc_service": method.service,
            "grpc_method": method.name,
            "grpc_type": kind_of(handler),
        }
        behavior = behavior_of(handler)
        if handler.response_streaming:
            # Unary methods, and streaming ones as writers: done after their last message.
            behavior = writing(behavior)
        if not inspect.iscoroutinefunction(behavior):
            return handler  # a synchronous behaviour: not one of this server's
        return rebuilt(handler, self._measure(behavior, labels))

    def _measure(self, behavior: Any, labels: dict[str, str]) -> Any:
        """``behavior`` measured (its counters looked up once per method and status code)."""
        started_total = self._metrics.rpc_started.labels(**labels)
        handled, seconds = self._metrics.rpc_handled, self._metrics.rpc_seconds
        by_code: dict[str, tuple[Any, Any]] = {}

        def finish(started: float, context: Any, exc: BaseException | None) -> None:
            elapsed = time.perf_counter() - started
            code = code_name(context, exc)
            counters = by_code.get(code)
            if counters is None:
                counters = by_code[code] = (
                    handled.labels(**labels, grpc_code=code),
                    seconds.labels(**labels, grpc_code=code),
                )
            counters[0].inc()
            counters[1].observe(elapsed)

        async def call(request: Any, context: Any) -> Any:
            started_total.inc()
            started = time.perf_counter()
            try:
                response = await behavior(request, context)
            except BaseException as exc:
                finish(started, context, exc)
                raise
            finish(started, context, None)
            return response

        return call
