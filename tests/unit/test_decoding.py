"""Per-RPC message limits and undecodable requests (api/decoding.py), without a server."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import grpc
import pytest
from google.rpc import code_pb2, error_details_pb2, status_pb2

from costsim.analytics.v1 import analytics_pb2 as pb
from costsim_analytics.api.decoding import (
    MAX_GRPC_MESSAGE,
    DecodingInterceptor,
    MessageLimit,
    MessageLimits,
    Undecodable,
    guarded,
    rpc,
)
from costsim_analytics.api.errors import status_of
from costsim_analytics.engines.errors import InvalidArgument, MessageTooLarge
from costsim_analytics.settings import Settings

KIB = 1024
LIMIT = MessageLimit(100, "COSTSIM_MAX_QUERY_MESSAGE_KB")


def test_the_defaults_give_small_limits_to_queries_and_large_ones_to_records_and_samples():
    limits = MessageLimits.from_settings(Settings())
    query = 64 * KIB
    assert limits.of(rpc("QueryProvenance")).bytes == query
    assert limits.of(rpc("CompareGolden")).bytes == query
    assert limits.of("/grpc.health.v1.Health/Check").bytes == query
    assert limits.of(rpc("WriteProvenanceBatch")).bytes == 1000 * 32 * KIB + query
    assert limits.of(rpc("RunCanary")).bytes == 64 * KIB * KIB
    assert limits.of(rpc("CreateGoldenDataset")).bytes == 64 * KIB * KIB
    assert limits.largest == 64 * KIB * KIB


def test_the_batch_limit_follows_max_batch_and_every_limit_stays_within_grpcs_2_gib():
    small = MessageLimits.from_settings(Settings(max_batch=10, max_record_kb=2))
    assert small.of(rpc("WriteProvenanceBatch")).bytes == 10 * 2 * KIB + 64 * KIB
    huge = MessageLimits.from_settings(Settings(max_batch=100_000, max_record_kb=1024))
    assert huge.of(rpc("WriteProvenanceBatch")).bytes == MAX_GRPC_MESSAGE
    assert huge.largest == MAX_GRPC_MESSAGE


def test_a_request_over_its_limit_is_refused_before_it_is_parsed():
    parsed: list[bytes] = []

    def deserializer(data: bytes) -> bytes:
        parsed.append(data)
        return data

    decode = guarded(deserializer, rpc("GetCanaryReport"), LIMIT)
    assert decode(b"x" * 100) == b"x" * 100
    refused = decode(b"x" * 101)
    assert isinstance(refused, Undecodable) and isinstance(refused.error, MessageTooLarge)
    assert parsed == [b"x" * 100]
    assert refused.error.metadata == {
        "method": "GetCanaryReport",
        "limit_bytes": "100",
        "size_bytes": "101",
        "setting": "COSTSIM_MAX_QUERY_MESSAGE_KB",
    }


def test_message_too_large_is_resource_exhausted_without_retry_info():
    refused = guarded(None, rpc("GetCanaryReport"), LIMIT)(b"x" * 101)
    status = status_of(refused.error, "req-1")
    assert status.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    [raw] = [v for k, v in status.trailing_metadata if k == "grpc-status-details-bin"]
    rich = status_pb2.Status.FromString(raw)
    assert rich.code == code_pb2.RESOURCE_EXHAUSTED
    kinds = [d.type_url.rsplit(".", 1)[-1] for d in rich.details]
    assert kinds == ["ErrorInfo"]  # no RetryInfo: the same request fails again
    info = error_details_pb2.ErrorInfo()
    rich.details[0].Unpack(info)
    assert info.reason == "MESSAGE_TOO_LARGE" and info.metadata["limit_bytes"] == "100"


def test_bytes_protobuf_refuses_become_malformed_request_naming_the_field():
    decode = guarded(pb.GetCanaryReportRequest.FromString, rpc("GetCanaryReport"), LIMIT)
    assert decode(b"\x0a\x01a") == pb.GetCanaryReportRequest(run_id="a")
    refused = decode(b"\x0a\x01\xff")
    assert isinstance(refused, Undecodable) and isinstance(refused.error, InvalidArgument)
    assert refused.error.reason == "MALFORMED_REQUEST"
    assert [(v.field, v.description) for v in refused.error.violations] == [
        ("run_id", "is not valid UTF-8")
    ]


def test_a_deserializer_of_unknown_type_still_names_the_request():
    def strict(data: bytes) -> object:
        return pb.GetCanaryReportRequest.FromString(data)  # no __self__ to find the type by

    refused = guarded(strict, rpc("GetCanaryReport"), LIMIT)(b"\xff")
    assert isinstance(refused, Undecodable)
    [violation] = refused.error.violations  # type: ignore[attr-defined]
    assert violation.field == "request" and "Wire format was corrupt" in violation.description


class FakeContext:
    def __init__(self) -> None:
        self.status: grpc.Status | None = None

    def invocation_metadata(self) -> tuple[()]:
        return ()

    async def abort_with_status(self, status: grpc.Status) -> None:
        self.status = status
        raise RuntimeError("aborted")


def test_the_interceptor_answers_undecodable_requests_without_running_the_method():
    ran: list[object] = []

    async def behavior(request: object, context: object) -> pb.GetCanaryReportResponse:
        ran.append(request)
        return pb.GetCanaryReportResponse()

    inner = grpc.unary_unary_rpc_method_handler(
        behavior,
        request_deserializer=pb.GetCanaryReportRequest.FromString,
        response_serializer=pb.GetCanaryReportResponse.SerializeToString,
    )

    class Details:
        method = rpc("GetCanaryReport")

    async def continuation(_details: object) -> grpc.RpcMethodHandler[object, object]:
        return inner

    interceptor = DecodingInterceptor(MessageLimits(LIMIT, {}))
    handler = asyncio.run(interceptor.intercept_service(continuation, Details()))  # type: ignore[arg-type]
    assert handler.request_deserializer is not None and handler.unary_unary is not None
    good = handler.request_deserializer(b"\x0a\x01a")
    answer = asyncio.run(handler.unary_unary(good, cast(Any, FakeContext())))
    assert answer == pb.GetCanaryReportResponse()
    context = FakeContext()
    with pytest.raises(RuntimeError, match="aborted"):
        bad = handler.request_deserializer(b"\xff")
        asyncio.run(handler.unary_unary(bad, cast(Any, context)))
    assert ran == [pb.GetCanaryReportRequest(run_id="a")]
    assert context.status is not None and context.status.code == grpc.StatusCode.INVALID_ARGUMENT
