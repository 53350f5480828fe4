"""The interceptors' shared entry: wrapped once per method; streams written, not re-yielded."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, cast

import grpc
import pytest

from costsim_analytics.api.intercepting import Method, WrappingInterceptor, rebuilt, writing
from costsim_analytics.api.metrics import MetricsInterceptor, ServiceMetrics

METHOD = "/costsim.analytics.v1.AnalyticsService/QueryCanaryReports"


class Details:
    method = METHOD


class Context:
    """A servicer context that records what is written, or fails the ``fail_at``-th write."""

    def __init__(self, fail_at: int | None = None, error: BaseException | None = None) -> None:
        self.written: list[object] = []
        self._fail_at = fail_at
        self._error = error

    async def write(self, message: object) -> None:
        if self._fail_at is not None and len(self.written) == self._fail_at:
            assert self._error is not None
            raise self._error
        self.written.append(message)

    def code(self) -> None:
        return None


class Counting(WrappingInterceptor):
    def __init__(self) -> None:
        super().__init__()
        self.built: list[str] = []

    def wrap(self, method: Method, handler: grpc.RpcMethodHandler[Any, Any]) -> Any:
        self.built.append(method.name)
        return rebuilt(handler, handler.unary_unary)


def test_a_method_is_wrapped_once_while_its_inner_handler_stays_the_same() -> None:
    async def behavior(request: object, context: object) -> object:
        return request

    first = grpc.unary_unary_rpc_method_handler(behavior)
    second = grpc.unary_unary_rpc_method_handler(behavior)
    inner = [first]

    async def continuation(_details: object) -> grpc.RpcMethodHandler[Any, Any]:
        return inner[0]

    interceptor = Counting()

    def intercept() -> Any:
        return asyncio.run(interceptor.intercept_service(continuation, cast(Any, Details())))

    once, again = intercept(), intercept()
    assert once is again and once is not first
    assert interceptor.built == ["QueryCanaryReports"]
    inner[0] = second  # another inner handler: wrapped anew
    assert intercept() is not once
    assert interceptor.built == ["QueryCanaryReports", "QueryCanaryReports"]


def test_method_names_are_split_into_service_and_method() -> None:
    method = Method.parse(METHOD)
    assert (method.full, method.service, method.name) == (
        METHOD,
        "costsim.analytics.v1.AnalyticsService",
        "QueryCanaryReports",
    )


def _messages(closed: list[bool]) -> Any:
    async def messages(request: object, context: object) -> AsyncIterator[int]:
        try:
            for i in range(3):
                yield i
        finally:
            closed.append(True)

    return messages


def test_a_generator_is_written_message_by_message_and_closed_when_a_write_fails() -> None:
    closed: list[bool] = []
    write_all = writing(_messages(closed))
    assert write_all is not None
    context = Context()
    asyncio.run(write_all(None, cast(Any, context)))
    assert context.written == [0, 1, 2] and closed == [True]

    closed.clear()
    failing = Context(fail_at=1, error=asyncio.CancelledError())
    with pytest.raises(asyncio.CancelledError):
        asyncio.run(write_all(None, cast(Any, failing)))
    assert failing.written == [0] and closed == [True]  # closed at once, not when collected


def test_a_writer_is_kept_and_a_synchronous_behaviour_is_not_driven() -> None:
    async def writer(request: object, context: object) -> None:
        return None

    def sync(request: object, context: object) -> object:
        return request

    assert writing(writer) is writer
    assert writing(sync) is None


def _handled(metrics: ServiceMetrics, code: str) -> float | None:
    return metrics.registry.get_sample_value(
        "grpc_server_handled_total",
        {
            "grpc_service": "costsim.analytics.v1.AnalyticsService",
            "grpc_method": "QueryCanaryReports",
            "grpc_type": "server_stream",
            "grpc_code": code,
        },
    )


def test_metrics_count_a_stream_ok_or_cancelled_by_how_it_ended() -> None:
    metrics = ServiceMetrics()
    closed: list[bool] = []
    inner = grpc.unary_stream_rpc_method_handler(_messages(closed))

    async def continuation(_details: object) -> grpc.RpcMethodHandler[Any, Any]:
        return inner

    interceptor = MetricsInterceptor(metrics)
    handler = asyncio.run(interceptor.intercept_service(continuation, cast(Any, Details())))
    stream: Any = handler.unary_stream
    context = Context()
    asyncio.run(stream(None, context))
    assert context.written == [0, 1, 2] and _handled(metrics, "OK") == 1.0

    gone = Context(fail_at=2, error=grpc.aio.InternalError("send failed"))
    with pytest.raises(grpc.aio.InternalError):
        asyncio.run(stream(None, gone))
    assert _handled(metrics, "CANCELLED") == 1.0 and closed == [True, True]
