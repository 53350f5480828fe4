"""The AnalyticsService servicer: transport only.

Each method converts the request to a domain command, runs the registered handler in the
worker pool (handlers and drivers are synchronous), and converts the answer back.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Executor
from typing import TypeVar

import grpc

from costsim.analytics.v1 import analytics_pb2 as pb
from costsim.analytics.v1 import analytics_pb2_grpc as pb_grpc
from costsim_analytics.api import convert, convert_canary, convert_golden
from costsim_analytics.api.auth import PRINCIPAL
from costsim_analytics.api.errors import streaming, unary
from costsim_analytics.engines.errors import Unauthenticated
from costsim_analytics.handlers.call import Call
from costsim_analytics.handlers.registry import (
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
Context = grpc.aio.ServicerContext[object, object]


class AnalyticsServicer(pb_grpc.AnalyticsServiceServicer):
    """gRPC face of the operation registry."""

    def __init__(self, registry: OperationRegistry, executor: Executor) -> None:
        self._registry = registry
        self._executor = executor

    async def _run(
        self, op: Operation[C, R], to_command: Callable[[Req], C], request: Req, context: Context
    ) -> R:
        """Convert the request and run the handler, both in a worker thread.

        Converting a large request (100,000 canary samples, 1,000 Struct payloads) takes tens
        to hundreds of milliseconds: on the event loop it would stall every other call.
        """
        handler = self._registry.get(op)
        principal = PRINCIPAL.get()
        if principal is None:  # fail closed: this server runs behind the AuthInterceptor
            raise Unauthenticated("the call was not authenticated", reason="CREDENTIALS_MISSING")
        call = Call(principal=principal)
        return await asyncio.get_running_loop().run_in_executor(
            self._executor, lambda: handler(to_command(request), call)
        )

    async def _drain(self, stream: ResultStream[T]) -> AsyncIterator[tuple[T, str]]:
        """Yield a stream's items, fetching the next chunk while this one is being sent."""
        loop = asyncio.get_running_loop()
        pending = loop.run_in_executor(self._executor, stream.next_chunk)
        try:
            while chunk := await pending:
                pending = loop.run_in_executor(self._executor, stream.next_chunk)
                for pair in chunk:
                    yield pair
        finally:
            # Not awaited: a cancelled call must not wait for it. The stream's lock makes the
            # close wait for a fetch still running in a worker.
            loop.run_in_executor(self._executor, stream.close)

    @unary
    async def WriteProvenanceBatch(
        self, request: pb.WriteProvenanceBatchRequest, context: Context
    ) -> pb.WriteProvenanceBatchResponse:
        """Store a batch of provenance records."""
        result = await self._run(OP_PROVENANCE_BATCH, convert.write_batch, request, context)
        return convert.write_batch_response(result)

    @streaming
    async def QueryProvenance(
        self, request: pb.QueryProvenanceRequest, context: Context
    ) -> AsyncIterator[pb.QueryProvenanceResponse]:
        """Stream provenance records, newest first."""
        stream = await self._run(OP_PROVENANCE_QUERY, convert.provenance_query, request, context)
        async for record, token in self._drain(stream):
            yield convert.provenance_response(record, token)

    @unary
    async def GetDriftStats(
        self, request: pb.GetDriftStatsRequest, context: Context
    ) -> pb.GetDriftStatsResponse:
        """Summarise cost_delta."""
        stats = await self._run(OP_DRIFT_STATS, convert.drift_query, request, context)
        return convert.drift_stats(stats)

    @streaming
    async def QueryCanaryReports(
        self, request: pb.QueryCanaryReportsRequest, context: Context
    ) -> AsyncIterator[pb.QueryCanaryReportsResponse]:
        """Stream canary reports, newest first."""
        stream = await self._run(OP_CANARY_REPORTS, convert_canary.report_query, request, context)
        async for report, token in self._drain(stream):
            yield pb.QueryCanaryReportsResponse(
                report=convert_canary.canary_report(report), page_token=token
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

    @unary
    async def CompareGolden(
        self, request: pb.CompareGoldenRequest, context: Context
    ) -> pb.CompareGoldenResponse:
        """Judge a candidate cost model against a golden dataset version."""
        comparison = await self._run(OP_GOLDEN_COMPARE, convert_golden.compare, request, context)
        return pb.CompareGoldenResponse(comparison=convert_golden.comparison(comparison))
