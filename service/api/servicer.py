"""The AnalyticsService servicer: transport only.

Each method converts the request to a domain command, runs the registered handler in a worker
pool (handlers and drivers are synchronous), and converts the answer back. Every call is
admitted first (``api/admission.py``): over a bound it is refused before any work is queued,
and its class decides the pool it runs in, so short calls never queue behind streams or
canary runs.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from concurrent.futures import Executor, Future
from typing import TypeVar

import grpc

from costsim.analytics.v1 import analytics_pb2 as pb
from costsim.analytics.v1 import analytics_pb2_grpc as pb_grpc
from costsim_analytics.api import convert, convert_canary, convert_explain, convert_golden
from costsim_analytics.api.admission import (
    SLOW_READER,
    Admission,
    CallClass,
    Slot,
    WorkerPools,
    release_when_done,
    submit,
)
from costsim_analytics.api.auth import PRINCIPAL
from costsim_analytics.api.errors import streaming, unary
from costsim_analytics.auth.principal import Principal
from costsim_analytics.engines.errors import ResourceExhausted, Unauthenticated
from costsim_analytics.handlers.call import Call
from costsim_analytics.handlers.registry import (
    OP_CANARY_EXPLAIN,
    OP_CANARY_REPORT,
    OP_CANARY_REPORTS,
    OP_CANARY_RUN,
    OP_DRIFT_STATS,
    OP_GOLDEN_ACTIVATE,
    OP_GOLDEN_COMPARE,
    OP_GOLDEN_CREATE,
    OP_GOLDEN_GET,
    OP_GOLDEN_LIST,
    OP_GOLDEN_PROMOTE,
    OP_PROVENANCE_BATCH,
    OP_PROVENANCE_QUERY,
    Operation,
    OperationRegistry,
)
from costsim_analytics.handlers.streams import ResultStream

C = TypeVar("C")
R = TypeVar("R")
Req = TypeVar("Req")
T = TypeVar("T")
M = TypeVar("M")
A = TypeVar("A")
Context = grpc.aio.ServicerContext[object, object]

# The operations that evaluate cost models over many samples, or read and judge a run's
# artifacts whole (ExplainCanaryRun): seconds, not milliseconds.
LONG = frozenset(
    op.name for op in (OP_CANARY_RUN, OP_GOLDEN_COMPARE, OP_GOLDEN_PROMOTE, OP_CANARY_EXPLAIN)
)


def deadline_of(context: Context) -> float | None:
    """The call's deadline as ``time.monotonic()`` seconds (None: the client set none)."""
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


def admission_key(principal: Principal, context: Context) -> str:
    """Whose bounds a call counts against: its principal's.

    In the insecure mode every caller is the same principal, so there each connection (peer
    address) counts as one: a client with many streams open cannot lock the others out.
    """
    if principal.authenticated_by == "insecure":
        return f"insecure:{context.peer()}"
    return principal.id


class AnalyticsServicer(pb_grpc.AnalyticsServiceServicer):
    """gRPC face of the operation registry."""

    def __init__(
        self,
        registry: OperationRegistry,
        pools: WorkerPools,
        admission: Admission,
        *,
        send_timeout_s: float = 30.0,
    ) -> None:
        self._registry = registry
        self._pools = pools
        self._admission = admission
        self.send_timeout_s = send_timeout_s

    def stalled(self, method: str) -> ResourceExhausted:
        """A stream cut because its reader read nothing for ``send_timeout_s`` (counted)."""
        self._admission.refused("stream", SLOW_READER)
        return ResourceExhausted(
            f"the client read nothing for {self.send_timeout_s:g} s; the stream was cut."
            " Resume it with the page_token of the last message received",
            reason=SLOW_READER,
            retry_after_s=0.0,
            metadata={"method": method},
        )

    def _admit(self, cls: CallClass, context: Context) -> tuple[Call, Slot, str]:
        """The call's context, its admission slot, and whose it is."""
        principal = PRINCIPAL.get()
        if principal is None:  # fail closed: this server runs behind the AuthInterceptor
            raise Unauthenticated("the call was not authenticated", reason="CREDENTIALS_MISSING")
        key = admission_key(principal, context)
        slot = self._admission.enter(cls, key)
        return Call(principal=principal, deadline=deadline_of(context)), slot, key

    async def _run(
        self, op: Operation[C, R], to_command: Callable[[Req], C], request: Req, context: Context
    ) -> R:
        """Admit the call, then convert the request and run the handler in a worker thread.

        Converting a large request (100,000 canary samples, 1,000 Struct payloads) takes tens
        to hundreds of milliseconds: on the event loop it would stall every other call.
        """
        return await self._run_then(op, to_command, request, context, lambda result: result)

    async def _run_then(
        self,
        op: Operation[C, R],
        to_command: Callable[[Req], C],
        request: Req,
        context: Context,
        to_answer: Callable[[R], A],
    ) -> A:
        """:meth:`_run`, and the result converted by ``to_answer`` in the same worker thread.

        For an answer computed whole and sent as a stream (ExplainCanaryRun): its messages are
        built off the event loop too, and the call's slot is free once they are, since the
        answer holds no database connection while it is sent.
        """
        cls: CallClass = "long" if op.name in LONG else "unary"
        call, slot, key = self._admit(cls, context)
        handler = self._registry.get(op)
        future = submit(
            self._pools.of(cls), lambda: to_answer(handler(to_command(request), call)), call, key
        )
        release_when_done(future, slot)
        return await asyncio.wrap_future(future)

    async def _stream(
        self,
        op: Operation[C, ResultStream[T]],
        to_command: Callable[[Req], C],
        request: Req,
        context: Context,
        to_message: Callable[[T, str], M],
    ) -> AsyncGenerator[M]:
        """Admit the stream, open it, and yield its messages; its slot lasts until it is closed.

        Chunks are fetched and converted to messages in the stream pool (the next while this
        one is being sent), so the event loop only sends: a busy stream costs the other calls
        on the loop little, and the fair pool bounds how many of one caller's chunks are
        converted at once. The stream is opened and its first chunk fetched and converted in
        ONE worker job. Once the last chunk is in, the stream is closed in the pool while its
        messages are being sent: a page that fits in one chunk costs one hand-off before its
        first message, and its transaction's end is not on the way to it.
        """
        call, slot, key = self._admit("stream", context)
        handler = self._registry.get(op)
        pool = self._pools.stream

        def fetch(stream: ResultStream[T]) -> list[M]:
            return [to_message(item, token) for item, token in stream.next_chunk()]

        def open_first() -> tuple[ResultStream[T], list[M]]:
            stream = handler(to_command(request), call)
            try:
                return stream, fetch(stream)
            except BaseException:
                stream.close()
                raise

        opening = submit(pool, open_first, call, key)
        try:
            stream, chunk = await asyncio.wrap_future(opening)
        except BaseException:
            # Cancelled while a worker still opens it: close what it opens, then free the slot.
            opening.add_done_callback(_close_opened)
            release_when_done(opening, slot)
            raise
        closing: Future[None] | None = None
        closed = False
        try:
            while True:
                if stream.exhausted:
                    closing, closed = _close_in(pool, stream), True
                    pending = None
                else:
                    pending = asyncio.wrap_future(submit(pool, lambda: fetch(stream), call, key))
                for message in chunk:
                    yield message
                if pending is None:
                    break
                chunk = await pending
        finally:
            # Not awaited: a cancelled call must not wait for it. The stream's lock makes the
            # close wait for a fetch still running in a worker. The slot is free once the
            # stream is closed and its messages are sent (or the call is over).
            if not closed:
                closing = _close_in(pool, stream)
            if closing is None:
                slot.release()
            else:
                release_when_done(closing, slot)

    @unary
    async def WriteProvenanceBatch(
        self, request: pb.WriteProvenanceBatchRequest, context: Context
    ) -> pb.WriteProvenanceBatchResponse:
        """Store a batch of provenance records."""
        result = await self._run(OP_PROVENANCE_BATCH, convert.write_batch, request, context)
        return convert.write_batch_response(result)

    @streaming
    def QueryProvenance(
        self, request: pb.QueryProvenanceRequest, context: Context
    ) -> AsyncIterator[pb.QueryProvenanceResponse]:
        """Stream provenance records, newest first (``streaming`` closes the generator)."""
        return self._stream(
            OP_PROVENANCE_QUERY,
            convert.provenance_query,
            request,
            context,
            convert.provenance_response,
        )

    @unary
    async def GetDriftStats(
        self, request: pb.GetDriftStatsRequest, context: Context
    ) -> pb.GetDriftStatsResponse:
        """Summarise cost_delta."""
        stats = await self._run(OP_DRIFT_STATS, convert.drift_query, request, context)
        return convert.drift_stats(stats)

    @streaming
    def QueryCanaryReports(
        self, request: pb.QueryCanaryReportsRequest, context: Context
    ) -> AsyncIterator[pb.QueryCanaryReportsResponse]:
        """Stream canary reports, newest first (``streaming`` closes the generator)."""
        return self._stream(
            OP_CANARY_REPORTS,
            convert_canary.report_query,
            request,
            context,
            convert_canary.report_response,
        )

    @unary
    async def GetCanaryReport(
        self, request: pb.GetCanaryReportRequest, context: Context
    ) -> pb.GetCanaryReportResponse:
        """One report by run id."""
        report = await self._run(OP_CANARY_REPORT, convert_canary.get_report, request, context)
        return pb.GetCanaryReportResponse(report=convert_canary.canary_report(report))

    @unary
    async def RunCanary(
        self, request: pb.RunCanaryRequest, context: Context
    ) -> pb.RunCanaryResponse:
        """Run a canary comparison and return its report."""
        result = await self._run(OP_CANARY_RUN, convert_canary.run_canary, request, context)
        return convert_canary.run_canary_response(result)

    @unary
    async def CreateGoldenDataset(
        self, request: pb.CreateGoldenDatasetRequest, context: Context
    ) -> pb.CreateGoldenDatasetResponse:
        """Store a new golden dataset version from samples."""
        result = await self._run(OP_GOLDEN_CREATE, convert_golden.create, request, context)
        dataset, replayed = convert_golden.stored(result)
        return pb.CreateGoldenDatasetResponse(dataset=dataset, replayed=replayed)

    @unary
    async def PromoteCanaryRun(
        self, request: pb.PromoteCanaryRunRequest, context: Context
    ) -> pb.PromoteCanaryRunResponse:
        """Store a new golden dataset version from a canary run."""
        result = await self._run(OP_GOLDEN_PROMOTE, convert_golden.promote, request, context)
        dataset, replayed = convert_golden.stored(result)
        return pb.PromoteCanaryRunResponse(dataset=dataset, replayed=replayed)

    @unary
    async def GetGoldenDataset(
        self, request: pb.GetGoldenDatasetRequest, context: Context
    ) -> pb.GetGoldenDatasetResponse:
        """One golden dataset version with its samples."""
        dataset = await self._run(OP_GOLDEN_GET, convert_golden.get, request, context)
        return pb.GetGoldenDatasetResponse(dataset=convert_golden.dataset_message(dataset))

    @unary
    async def ListGoldenDatasets(
        self, request: pb.ListGoldenDatasetsRequest, context: Context
    ) -> pb.ListGoldenDatasetsResponse:
        """Every golden dataset version, without samples."""
        datasets = await self._run(OP_GOLDEN_LIST, convert_golden.list_datasets, request, context)
        return pb.ListGoldenDatasetsResponse(
            datasets=[convert_golden.dataset_message(d) for d in datasets]
        )

    @unary
    async def ActivateGoldenDataset(
        self, request: pb.ActivateGoldenDatasetRequest, context: Context
    ) -> pb.ActivateGoldenDatasetResponse:
        """Make one version the active version of its name."""
        dataset = await self._run(OP_GOLDEN_ACTIVATE, convert_golden.activate, request, context)
        return pb.ActivateGoldenDatasetResponse(dataset=convert_golden.dataset_message(dataset))

    @streaming
    async def ExplainCanaryRun(
        self, request: pb.ExplainCanaryRunRequest, context: Context
    ) -> AsyncIterator[pb.ExplainCanaryRunResponse]:
        """Explain a canary run: the summary, then its most drifting samples one by one."""
        messages = await self._run_then(
            OP_CANARY_EXPLAIN,
            convert_explain.explain_run,
            request,
            context,
            convert_explain.messages,
        )
        for message in messages:
            yield message

    @unary
    async def CompareGolden(
        self, request: pb.CompareGoldenRequest, context: Context
    ) -> pb.CompareGoldenResponse:
        """Judge a candidate cost model against a golden dataset version."""
        comparison = await self._run(OP_GOLDEN_COMPARE, convert_golden.compare, request, context)
        return pb.CompareGoldenResponse(comparison=convert_golden.comparison(comparison))


def _close_in(pool: Executor, stream: ResultStream[T]) -> Future[None] | None:
    """Close ``stream`` in a worker of ``pool``: the future of that, or None if closed here."""
    try:
        return pool.submit(stream.close)
    except RuntimeError:  # the pools are shut down: a stream outlived the grace
        stream.close()
        return None


def _close_opened(future: Future[tuple[ResultStream[T], list[M]]]) -> None:
    """Close the stream a worker opened for a call that was gone by then."""
    if not future.cancelled() and future.exception() is None:
        future.result()[0].close()
