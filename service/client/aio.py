"""The asyncio client: the same calls as :class:`~costsim_analytics.client.AnalyticsClient`.

Example:
    >>> async with AsyncAnalyticsClient("127.0.0.1:50051") as client:  # doctest: +SKIP
    ...     async for report in client.query_canary_reports(status="fail"):
    ...         print(report.run_id, list(report.failure_reasons))

"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any, Generic, Self, TypeVar

import grpc
from google.protobuf import message

from costsim.analytics.v1 import analytics_pb2 as pb
from costsim_analytics.client import _calls
from costsim_analytics.client._calls import Pager, RecordLike, message_of, new_request_id, path
from costsim_analytics.client.channel import Credentials, RotatingChannel, StrPath
from costsim_analytics.client.errors import from_grpc
from costsim_analytics.client.retry import RetryPolicy, pause_before_retry, should_retry
from costsim_analytics.client.sync import DEFAULT_TIMEOUT_S

T = TypeVar("T")
R = TypeVar("R", bound=message.Message)


class AsyncRecordStream(AsyncIterator[T], Generic[T]):
    """The messages of a streaming query, all pages, resumed when a stream breaks (asyncio).

    ``page_token`` is the token of the last message handed out; ``await cancel()`` ends it.
    """

    def __init__(
        self, items: Callable[[AsyncRecordStream[T]], AsyncIterator[T]], pager: Pager
    ) -> None:
        self._pager = pager
        self._call: Any = None
        self._items = items(self)

    @property
    def page_token(self) -> str:
        """Where a query with the same filters continues (empty before the first message)."""
        return self._pager.page_token

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> T:
        return await anext(self._items)

    async def cancel(self) -> None:
        """Stop: cancel the call in flight; the iteration ends."""
        if self._call is not None:
            self._call.cancel()
        aclose = getattr(self._items, "aclose", None)
        if aclose is not None:
            await aclose()


class AsyncAnalyticsClient:
    """An asyncio client of ``costsim.analytics.v1.AnalyticsService`` over one channel.

    The same arguments, deadlines, retries and errors as
    :class:`~costsim_analytics.client.AnalyticsClient`; every call is a coroutine and every
    streaming query an async iterator. Create it inside the event loop that uses it.
    """

    def __init__(
        self,
        target: str,
        *,
        token: str = "",
        token_file: StrPath | None = None,
        tls: bool = False,
        ca_file: StrPath | None = None,
        cert_file: StrPath | None = None,
        key_file: StrPath | None = None,
        server_name: str = "",
        credentials: Credentials | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        retry: RetryPolicy | None = None,
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        self.target = target
        self.credentials = credentials or Credentials(
            token=token,
            token_file=token_file,
            tls=tls,
            ca_file=ca_file,
            cert_file=cert_file,
            key_file=key_file,
            server_name=server_name,
        )
        self.timeout_s = timeout_s
        self.retry = retry or RetryPolicy()
        self._channels = RotatingChannel(
            self.credentials, lambda: self.credentials.aio_channel(target, options)
        )
        self._callables: dict[tuple[str, bool, int], Any] = {}
        self._closing: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the channel; calls in flight are cancelled."""
        for old in self._channels.retired(everything=True):
            await old.close(None)
        await self._channels.channel.close(None)

    # --- the machinery ---------------------------------------------------------------------

    def _close_later(self, channel: grpc.aio.Channel) -> None:
        task = asyncio.get_running_loop().create_task(channel.close(None))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def _callable(self, method: str, response: type[message.Message], stream: bool) -> Any:
        channel, generation = self._channels.current()
        key = (method, stream, generation)
        if key not in self._callables:
            if generation:  # the certificate rotated: no call is made on the old channel again
                self._callables = {k: v for k, v in self._callables.items() if k[2] == generation}
                for old in self._channels.retired():
                    self._close_later(old)
            make = channel.unary_stream if stream else channel.unary_unary
            self._callables[key] = make(
                path(method), request_serializer=None, response_deserializer=response.FromString
            )
        return self._callables[key]

    async def call(
        self,
        method: str,
        request: bytes | message.Message,
        response: type[R],
        timeout_s: float | None = None,
    ) -> R:
        """One unary call with its deadline and retries; the response, or an ``RpcError``."""
        body = request if isinstance(request, bytes) else request.SerializeToString()
        stub = self._callable(method, response, stream=False)
        deadline = time.monotonic() + (timeout_s or self.timeout_s)
        attempt = 0
        while True:
            attempt += 1
            try:
                result: R = await stub(
                    body,
                    timeout=max(0.0, deadline - time.monotonic()),
                    metadata=self.credentials.metadata(),
                )
            except grpc.RpcError as exc:
                await asyncio.sleep(pause_before_retry(exc, attempt, self.retry, deadline))
                continue
            self.retry.budget.succeeded()
            return result

    def send_encoded(self, body: bytes, timeout_s: float) -> Any:
        """One attempt of a WriteProvenanceBatch of encoded bytes (for writers).

        gRPC's own retries of ``UNAVAILABLE`` apply; nothing else is retried. Await the
        returned call for the response (it raises ``grpc.aio.AioRpcError``); ``cancel()`` ends
        it.
        """
        stub = self._callable("WriteProvenanceBatch", pb.WriteProvenanceBatchResponse, False)
        return stub(body, timeout=timeout_s, metadata=self.credentials.metadata())

    def _stream(
        self,
        method: str,
        request: Any,
        response: type[message.Message],
        item: str,
        pager: Pager,
        timeout_s: float | None,
    ) -> AsyncRecordStream[Any]:
        stub = self._callable(method, response, stream=True)

        async def items(stream: AsyncRecordStream[Any]) -> AsyncIterator[Any]:
            attempt = 0
            while (size := pager.next_size()) is not None:
                request.page_size, request.page_token = size, pager.page_token
                received = 0
                call = stub(
                    request.SerializeToString(),
                    timeout=timeout_s or self.timeout_s,
                    metadata=self.credentials.metadata(),
                )
                stream._call = call
                try:
                    async for msg in call:
                        received += 1
                        pager.saw(msg.page_token)
                        yield getattr(msg, item)
                except grpc.RpcError as exc:
                    error = from_grpc(exc)
                    attempt = 1 if received else attempt + 1
                    if not should_retry(error, attempt, self.retry):
                        raise error from None
                    await asyncio.sleep(self.retry.delay_s(error, attempt))
                    continue
                finally:
                    call.cancel()
                attempt = 0
                self.retry.budget.succeeded()
                if not pager.page_ended(received):
                    return

        return AsyncRecordStream(items, pager)

    # --- provenance ------------------------------------------------------------------------

    async def write_provenance_batch(
        self,
        records: Sequence[RecordLike],
        *,
        request_id: str | None = None,
        timeout_s: float | None = None,
    ) -> pb.WriteProvenanceBatchResponse:
        """Write one batch: all records stored, or none.

        ``records`` are prepared records, ``ProvenanceRecord`` messages, or mappings of
        :func:`~costsim_analytics.client.records.prepare_record`'s arguments (checked and hashed
        here). Without a ``request_id`` the client makes one, so its own retries are safe; pass
        your own to make a retry of the whole call (after a crash, say) safe too.
        """
        body = _calls.write_request(records, request_id or new_request_id())
        return await self.call(
            "WriteProvenanceBatch", body, pb.WriteProvenanceBatchResponse, timeout_s
        )

    def query_provenance(
        self,
        *,
        tenant_id: str = "",
        variant_slug: str = "",
        source: str = "",
        input_hash: str = "",
        run_id: str = "",
        start: datetime | None = None,
        end: datetime | None = None,
        page_size: int = 0,
        page_token: str = "",
        limit: int | None = None,
        timeout_s: float | None = None,
    ) -> AsyncRecordStream[pb.ProvenanceRecord]:
        """Every matching record, newest first, page after page (at most ``limit``).

        ``start`` is inclusive, ``end`` exclusive; ``page_token`` continues an earlier query.
        """
        request = pb.QueryProvenanceRequest(
            tenant_id=tenant_id,
            variant_slug=variant_slug,
            source=source,
            input_hash=input_hash,
            run_id=run_id,
        )
        _calls.window(request, start, end)
        pager = Pager(page_size, limit, page_token)
        return self._stream(
            "QueryProvenance", request, pb.QueryProvenanceResponse, "record", pager, timeout_s
        )

    async def get_drift_stats(
        self,
        *,
        tenant_id: str = "",
        variant_slug: str = "",
        start: datetime | None = None,
        end: datetime | None = None,
        timeout_s: float | None = None,
    ) -> pb.GetDriftStatsResponse:
        """Count, mean, min, max, standard deviation and p50/p90 of ``cost_delta``."""
        request = pb.GetDriftStatsRequest(tenant_id=tenant_id, variant_slug=variant_slug)
        _calls.window(request, start, end)
        return await self.call("GetDriftStats", request, pb.GetDriftStatsResponse, timeout_s)

    # --- canary ----------------------------------------------------------------------------

    def query_canary_reports(
        self,
        *,
        status: str | int = "",
        passed: bool | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
        page_size: int = 0,
        page_token: str = "",
        limit: int | None = None,
        timeout_s: float | None = None,
    ) -> AsyncRecordStream[pb.CanaryReport]:
        """Every matching canary report, newest first (``status``: ``fail``, ``pass``, ...)."""
        request = pb.QueryCanaryReportsRequest(status=_calls.canary_status(status), passed=passed)
        _calls.window(request, start, end)
        pager = Pager(page_size, limit, page_token)
        return self._stream(
            "QueryCanaryReports", request, pb.QueryCanaryReportsResponse, "report", pager, timeout_s
        )

    async def get_canary_report(
        self, run_id: str, *, timeout_s: float | None = None
    ) -> pb.CanaryReport:
        """One canary report by run id (``NotFoundError`` for an unknown one)."""
        request = pb.GetCanaryReportRequest(run_id=run_id)
        response = await self.call(
            "GetCanaryReport", request, pb.GetCanaryReportResponse, timeout_s
        )
        return response.report

    async def run_canary(
        self,
        request: pb.RunCanaryRequest | Mapping[str, Any] | None = None,
        /,
        *,
        timeout_s: float = 600.0,
        **fields: Any,
    ) -> pb.RunCanaryResponse:
        """Run a canary (fields as RunCanaryRequest's, e.g. ``sample_count=500``).

        Without a ``request_id`` the client makes one, so that its retries run it once.
        """
        message_ = message_of(pb.RunCanaryRequest, request, fields)
        message_.request_id = message_.request_id or new_request_id("canary")
        return await self.call("RunCanary", message_, pb.RunCanaryResponse, timeout_s)

    async def explain_canary_run(
        self, run_id: str, *, group_by: str = "", top: int = 0, timeout_s: float = 120.0
    ) -> _calls.Explanation:
        """Why a canary run drifted: its summary and its most drifting samples (``top``, 0: 10).

        ``group_by``: ``skill``, ``position``, ``iterations`` or ``prompt_band`` (default: skill).
        The stream is short and has no page tokens: it is read whole, and read again from the
        start when it fails (within the deadline, as a unary call would be retried).
        """
        request = _calls.explain_request(run_id, group_by, top).SerializeToString()
        stub = self._callable("ExplainCanaryRun", pb.ExplainCanaryRunResponse, stream=True)
        deadline = time.monotonic() + timeout_s
        attempt = 0
        while True:
            attempt += 1
            call = stub(
                request,
                timeout=max(0.0, deadline - time.monotonic()),
                metadata=self.credentials.metadata(),
            )
            try:
                messages = [m async for m in call]
            except grpc.RpcError as exc:
                await asyncio.sleep(pause_before_retry(exc, attempt, self.retry, deadline))
                continue
            self.retry.budget.succeeded()
            return _calls.explanation(messages)

    # --- golden datasets -------------------------------------------------------------------

    async def create_golden_dataset(
        self,
        name: str,
        samples: Sequence[pb.GoldenSample | Mapping[str, Any]],
        *,
        description: str = "",
        request_id: str | None = None,
        timeout_s: float = 300.0,
    ) -> pb.GoldenDataset:
        """Store a new version of a golden dataset (samples as messages or their JSON form)."""
        request = pb.CreateGoldenDatasetRequest(
            name=name,
            description=description,
            samples=_calls.golden_samples(samples),
            request_id=request_id or new_request_id("golden"),
        )
        response = await self.call(
            "CreateGoldenDataset", request, pb.CreateGoldenDatasetResponse, timeout_s
        )
        return response.dataset

    async def promote_canary_run(
        self,
        run_id: str,
        name: str,
        *,
        description: str = "",
        request_id: str | None = None,
        timeout_s: float = 300.0,
    ) -> pb.GoldenDataset:
        """Store a canary run's samples as a new golden version."""
        request = pb.PromoteCanaryRunRequest(
            run_id=run_id,
            name=name,
            description=description,
            request_id=request_id or new_request_id("promote"),
        )
        response = await self.call(
            "PromoteCanaryRun", request, pb.PromoteCanaryRunResponse, timeout_s
        )
        return response.dataset

    async def get_golden_dataset(
        self, name: str, version: int | None = None, *, timeout_s: float | None = None
    ) -> pb.GoldenDataset:
        """One version with its samples (the active one without ``version``)."""
        request = pb.GetGoldenDatasetRequest(name=name, version=version)
        response = await self.call(
            "GetGoldenDataset", request, pb.GetGoldenDatasetResponse, timeout_s
        )
        return response.dataset

    async def list_golden_datasets(
        self, name: str = "", *, timeout_s: float | None = None
    ) -> list[pb.GoldenDataset]:
        """Every version (of ``name``), without samples."""
        request = pb.ListGoldenDatasetsRequest(name=name)
        response = await self.call(
            "ListGoldenDatasets", request, pb.ListGoldenDatasetsResponse, timeout_s
        )
        return list(response.datasets)

    async def activate_golden_dataset(
        self, name: str, version: int, *, timeout_s: float | None = None
    ) -> pb.GoldenDataset:
        """Make one version the active one of its name (doing it twice changes nothing)."""
        request = pb.ActivateGoldenDatasetRequest(name=name, version=version)
        response = await self.call(
            "ActivateGoldenDataset", request, pb.ActivateGoldenDatasetResponse, timeout_s
        )
        return response.dataset

    async def compare_golden(
        self,
        request: pb.CompareGoldenRequest | Mapping[str, Any] | None = None,
        /,
        *,
        timeout_s: float = 300.0,
        **fields: Any,
    ) -> pb.GoldenComparison:
        """Judge a model against a golden version (fields as CompareGoldenRequest's)."""
        message_ = message_of(pb.CompareGoldenRequest, request, fields)
        response = await self.call("CompareGolden", message_, pb.CompareGoldenResponse, timeout_s)
        return response.comparison


__all__ = ["AsyncAnalyticsClient", "AsyncRecordStream"]
