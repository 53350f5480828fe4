"""The edge: domain errors become rich statuses; anything else becomes a generic INTERNAL."""

import asyncio
import logging
import time

import grpc
import pytest
from google.rpc import code_pb2, error_details_pb2, status_pb2

from costsim_analytics.api.errors import MAX_MESSAGE_CHARS, status_of, streaming, unary
from costsim_analytics.engines.errors import (
    DatabaseUnavailable,
    FieldViolation,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    RequestIdReused,
    ResourceExhausted,
    SchemaOutOfDate,
    Unauthenticated,
)


class Aborted(Exception):
    pass


class FakeContext:
    def __init__(self, metadata=(), *, blocked=False):
        self.metadata = metadata
        self.status: grpc.Status | None = None
        self.written: list[object] = []
        self.blocked = blocked  # a client that reads nothing: every write waits for ever

    async def write(self, message):
        if self.blocked:
            await asyncio.Event().wait()
        self.written.append(message)

    def invocation_metadata(self):
        return self.metadata

    async def abort_with_status(self, status):
        self.status = status
        raise Aborted


def decode(status: grpc.Status | None):
    assert status is not None, "the call was not aborted"
    [raw] = [v for k, v in status.trailing_metadata if k == "grpc-status-details-bin"]
    rich = status_pb2.Status.FromString(raw)
    info = error_details_pb2.ErrorInfo()
    bad = error_details_pb2.BadRequest()
    found_bad = False
    for detail in rich.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            detail.Unpack(info)
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            detail.Unpack(bad)
            found_bad = True
    return rich, info, bad if found_bad else None


def decode_status(status: grpc.Status | None):
    """The status, its ErrorInfo and its RetryInfo (None when it carries none)."""
    rich, info, _ = decode(status)
    retries = [d for d in rich.details if d.Is(error_details_pb2.RetryInfo.DESCRIPTOR)]
    retry = None
    if retries:
        retry = error_details_pb2.RetryInfo()
        retries[0].Unpack(retry)
    return rich, info, retry


class Svc:
    send_timeout_s = 0.05

    def __init__(self, exc):
        self.exc = exc

    def stalled(self, method):
        return ResourceExhausted("stalled", reason="SLOW_READER", retry_after_s=0.0)

    @unary
    async def Unary(self, request, context):
        raise self.exc

    @streaming
    async def Stream(self, request, context):
        yield 1
        raise self.exc


def call_unary(exc, metadata=()):
    ctx = FakeContext(metadata)
    with pytest.raises(Aborted):
        asyncio.run(Svc(exc).Unary(None, ctx))  # type: ignore[arg-type]  # decorated coroutine
    return ctx.status


@pytest.mark.parametrize(
    ("exc", "code", "reason"),
    [
        (NotFound("no such report"), code_pb2.NOT_FOUND, "NOT_FOUND"),
        (RequestIdReused("used"), code_pb2.ALREADY_EXISTS, "REQUEST_ID_REUSED"),
        (SchemaOutOfDate("behind"), code_pb2.FAILED_PRECONDITION, "SCHEMA_OUT_OF_DATE"),
        (DatabaseUnavailable("down"), code_pb2.UNAVAILABLE, "DATABASE_UNAVAILABLE"),
    ],
)
def test_domain_errors_map_to_codes_with_error_info(exc, code, reason):
    status = call_unary(exc, metadata=(("x-request-id", "req-42"),))
    rich, info, bad = decode(status)
    assert rich.code == code
    assert rich.message == exc.message
    assert (info.domain, info.reason) == ("costsim.analytics.v1", reason)
    assert info.metadata["request_id"] == "req-42"
    assert bad is None


def test_invalid_argument_carries_field_violations():
    exc = InvalidArgument(
        "bad",
        [FieldViolation("records[3].v1_cost", "must not be negative"), FieldViolation("x", "y")],
    )
    rich, info, bad = decode(call_unary(exc))
    assert rich.code == code_pb2.INVALID_ARGUMENT
    assert info.reason == "INVALID_ARGUMENT"
    assert [(v.field, v.description) for v in bad.field_violations] == [
        ("records[3].v1_cost", "must not be negative"),
        ("x", "y"),
    ]


def test_unexpected_error_is_generic_internal_and_logged(caplog):
    caplog.set_level(logging.ERROR)
    status = call_unary(RuntimeError("secret table name"), metadata=(("x-request-id", "r-9"),))
    rich, info, _ = decode(status)
    assert rich.code == code_pb2.INTERNAL
    assert "secret" not in rich.message
    assert "Traceback" not in rich.message
    error_id = info.metadata["error_id"]
    assert error_id in rich.message
    [record] = caplog.records
    assert error_id in record.getMessage() and "r-9" in record.getMessage()
    assert record.exc_info is not None


async def consume(stream):
    return [item async for item in stream]


def test_errors_after_the_first_streamed_message_are_mapped_too():
    ctx = FakeContext()
    with pytest.raises(Aborted):
        asyncio.run(consume(Svc(DatabaseUnavailable("gone")).Stream(None, ctx)))
    assert ctx.written == [1]  # sent through context.write, none yielded to gRPC
    rich, info, _ = decode(ctx.status)
    assert rich.code == code_pb2.UNAVAILABLE
    assert info.reason == "DATABASE_UNAVAILABLE"


def test_a_stream_whose_reader_stopped_reading_is_cut_with_resource_exhausted():
    ctx = FakeContext(blocked=True)
    with pytest.raises(Aborted):
        asyncio.run(consume(Svc(NotFound("never reached")).Stream(None, ctx)))
    rich, info, _ = decode(ctx.status)
    assert (rich.code, info.reason) == (code_pb2.RESOURCE_EXHAUSTED, "SLOW_READER")
    assert ctx.written == []


class SlowProducer(Svc):
    @streaming
    async def Stream(self, request, context):
        for n in range(3):
            await asyncio.sleep(self.send_timeout_s * 3)  # the next chunk from the database
            yield n


def test_time_spent_producing_the_next_message_does_not_count_as_a_slow_reader():
    ctx = FakeContext()
    asyncio.run(consume(SlowProducer(None).Stream(None, ctx)))
    assert ctx.status is None and ctx.written == [0, 1, 2]


def test_a_reader_that_stops_after_some_messages_is_cut_at_the_stalled_write():
    class StopsReading(FakeContext):
        async def write(self, message):
            if len(self.written) == 2:
                await asyncio.Event().wait()
            self.written.append(message)

    class Many(Svc):
        @streaming
        async def Stream(self, request, context):
            for n in range(5):
                yield n

    ctx = StopsReading()
    started = time.monotonic()
    with pytest.raises(Aborted):
        asyncio.run(consume(Many(None).Stream(None, ctx)))
    assert time.monotonic() - started < 2  # cut after send_timeout_s, not left hanging
    rich, info, _ = decode(ctx.status)
    assert (rich.code, info.reason) == (code_pb2.RESOURCE_EXHAUSTED, "SLOW_READER")
    assert ctx.written == [0, 1]


def test_a_cancelled_stream_stays_cancelled_and_is_not_a_slow_reader():
    ctx = FakeContext(blocked=True)

    async def cancel_soon():
        task = asyncio.ensure_future(consume(Svc(NotFound("never")).Stream(None, ctx)))
        await asyncio.sleep(0.01)  # inside its (blocked) first write, before send_timeout_s
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(cancel_soon())
    assert ctx.status is None


def test_auth_errors_map_to_their_codes_with_metadata():
    exc = Unauthenticated("bearer token expired", reason="TOKEN_EXPIRED")
    rich, info, bad = decode(call_unary(exc))
    assert (rich.code, info.reason, bad) == (code_pb2.UNAUTHENTICATED, "TOKEN_EXPIRED", None)
    method = "/costsim.analytics.v1.AnalyticsService/RunCanary"
    denied = PermissionDenied(
        "needs canary", reason="METHOD_NOT_ALLOWED", metadata={"method": method}
    )
    rich, info, _ = decode(call_unary(denied, metadata=(("x-request-id", "r-1"),)))
    assert rich.code == code_pb2.PERMISSION_DENIED
    assert dict(info.metadata) == {"method": method, "request_id": "r-1"}


def test_a_refused_batch_lists_its_records_in_bad_request():
    exc = PermissionDenied(
        "records[1].tenant_id: tenant 'globex' is not granted",
        [FieldViolation("records[1].tenant_id", "tenant 'globex' is not granted")],
        reason="TENANT_NOT_ALLOWED",
        metadata={"tenant": "globex"},
    )
    rich, info, bad = decode(call_unary(exc))
    assert (rich.code, info.reason, info.metadata["tenant"]) == (
        code_pb2.PERMISSION_DENIED,
        "TENANT_NOT_ALLOWED",
        "globex",
    )
    assert [v.field for v in bad.field_violations] == ["records[1].tenant_id"]


def test_status_texts_are_bounded_so_trailers_stay_small():
    huge = "x" * 10_000
    violations = [FieldViolation(f"records[{i}].{huge}", huge) for i in range(1000)]
    error = InvalidArgument(huge, violations)
    error.metadata["model"] = huge
    status = status_of(error, request_id=huge)
    assert len(status.details) <= MAX_MESSAGE_CHARS and status.details.endswith("…")
    [(_key, raw)] = status.trailing_metadata
    assert len(raw) * 4 // 3 + 3 * len(status.details) < 8 * 1024  # base64, percent-encoding
    decoded = status_pb2.Status.FromString(raw)
    info, bad = error_details_pb2.ErrorInfo(), error_details_pb2.BadRequest()
    decoded.details[0].Unpack(info)
    decoded.details[1].Unpack(bad)
    assert 1 <= len(bad.field_violations) < 1000
    assert int(info.metadata["violations_omitted"]) == 1000 - len(bad.field_violations)
    assert all(len(v.description) <= 256 for v in bad.field_violations)


def test_few_short_violations_are_all_sent():
    error = InvalidArgument(
        "bad", [FieldViolation(f"records[{i}].v1_cost", "bad") for i in range(100)]
    )
    [(_key, raw)] = status_of(error, request_id="r").trailing_metadata
    bad = error_details_pb2.BadRequest()
    status_pb2.Status.FromString(raw).details[1].Unpack(bad)
    assert len(bad.field_violations) == 100


def test_unavailable_says_when_to_retry_and_other_errors_do_not():
    from costsim_analytics.api.errors import status_of

    def retry_delays(error):
        rich = status_pb2.Status.FromString(
            dict(status_of(error, "r").trailing_metadata)["grpc-status-details-bin"]
        )
        delays = []
        for detail in rich.details:
            if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                info = error_details_pb2.RetryInfo()
                detail.Unpack(info)
                delays.append(info.retry_delay.ToTimedelta().total_seconds())
        return delays

    assert retry_delays(DatabaseUnavailable("down")) == [1.0]
    assert retry_delays(NotFound("gone")) == []
    assert retry_delays(InvalidArgument.field("x", "bad")) == []
