"""The one table from domain errors to gRPC and HTTP statuses, and the wrappers that apply it.

The servicer maps through :func:`status_of` (gRPC), the dashboard through :func:`http_status_of`.

Every non-OK status carries a ``google.rpc.ErrorInfo`` (AIP-193) with domain
``costsim.analytics.v1``, the error's stable reason and its metadata; INVALID_ARGUMENT (and
PERMISSION_DENIED for refused batch records) also carries a ``google.rpc.BadRequest`` naming
each offending field. Anything unexpected becomes INTERNAL with a generic message, and the log
line carries the error id and the request id.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Protocol, TypeVar

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from costsim_analytics.engines.errors import (
    AlreadyExists,
    CostsimError,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    MessageTooLarge,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)

log = logging.getLogger(__name__)

DOMAIN = "costsim.analytics.v1"
REQUEST_ID_HEADER = "x-request-id"
RETRY_PUSHBACK = "grpc-retry-pushback-ms"
# A status travels in trailers, which gRPC bounds (8 KiB soft, 16 KiB hard, after base64 and
# percent-encoding): every text in it is cut, and violations stop at a byte budget.
MAX_MESSAGE_CHARS = 512
MAX_DETAIL_CHARS = 256
MAX_VIOLATION_BYTES = 4096

# Domain error -> google.rpc code, HTTP status and its title. Most specific first: the first
# matching class wins.
_CODES: tuple[tuple[type[CostsimError], int, int, str], ...] = (
    (InvalidArgument, code_pb2.INVALID_ARGUMENT, 400, "Bad request"),
    (NotFound, code_pb2.NOT_FOUND, 404, "Not found"),
    (AlreadyExists, code_pb2.ALREADY_EXISTS, 409, "Conflict"),
    (FailedPrecondition, code_pb2.FAILED_PRECONDITION, 412, "Precondition failed"),
    (Unavailable, code_pb2.UNAVAILABLE, 503, "Unavailable"),
    (MessageTooLarge, code_pb2.RESOURCE_EXHAUSTED, 413, "Content too large"),
    (ResourceExhausted, code_pb2.RESOURCE_EXHAUSTED, 429, "Too many requests"),
    (DeadlineExceeded, code_pb2.DEADLINE_EXCEEDED, 504, "Deadline exceeded"),
    (Unauthenticated, code_pb2.UNAUTHENTICATED, 401, "Unauthenticated"),
    (PermissionDenied, code_pb2.PERMISSION_DENIED, 403, "Forbidden"),
)
INTERNAL_HTTP = (500, "Internal error")

Servicer = TypeVar("Servicer")
Request = TypeVar("Request")
Response = TypeVar("Response")
SenderT = TypeVar("SenderT", bound="Sender")


def code_of(error: CostsimError) -> int:
    """The google.rpc code for a domain error (INTERNAL for an unmapped subclass)."""
    for cls, code, _http, _title in _CODES:
        if isinstance(error, cls):
            return int(code)
    return int(code_pb2.INTERNAL)


def http_status_of(error: BaseException) -> tuple[int, str]:
    """The HTTP status and title for an error (500 for anything unexpected).

    Example:
        >>> http_status_of(NotFound("no such run"))
        (404, 'Not found')

    """
    for cls, _code, http, title in _CODES:
        if isinstance(error, cls):
            return http, title
    return INTERNAL_HTTP


def _pack(message: Any) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def _cut(text: str, limit: int = MAX_DETAIL_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _violations(
    error: CostsimError,
) -> tuple[list[error_details_pb2.BadRequest.FieldViolation], int]:
    """The error's violations as messages, cut to the byte budget; and how many were left off."""
    if not isinstance(error, InvalidArgument | PermissionDenied):
        return [], 0
    out: list[error_details_pb2.BadRequest.FieldViolation] = []
    size = 0
    for v in error.violations:
        field, description = _cut(v.field), _cut(v.description)
        size += len(field.encode()) + len(description.encode()) + 8
        if size > MAX_VIOLATION_BYTES and out:
            break
        out.append(
            error_details_pb2.BadRequest.FieldViolation(field=field, description=description)
        )
    return out, len(error.violations) - len(out)


def status_of(error: CostsimError, request_id: str) -> grpc.Status:
    """The full status for a domain error, every text in it bounded."""
    violations, omitted = _violations(error)
    metadata = {key: _cut(value) for key, value in error.metadata.items()}
    metadata["request_id"] = _cut(request_id)
    if omitted:
        metadata["violations_omitted"] = str(omitted)
    details = [
        _pack(error_details_pb2.ErrorInfo(reason=error.reason, domain=DOMAIN, metadata=metadata))
    ]
    if violations:
        details.append(_pack(error_details_pb2.BadRequest(field_violations=violations)))
    retry_after_s = _retry_after_s(error)
    if retry_after_s is not None:  # AIP-194: say when a retry makes sense
        delay = duration_pb2.Duration()
        delay.FromTimedelta(timedelta(seconds=retry_after_s))
        details.append(_pack(error_details_pb2.RetryInfo(retry_delay=delay)))
    message = _cut(error.message, MAX_MESSAGE_CHARS)
    status = rpc_status.to_status(
        status_pb2.Status(code=code_of(error), message=message, details=details)
    )
    if retry_after_s:
        # The same advice for gRPC's own retry policy, which reads this trailer (gRFC A6).
        pushback = (RETRY_PUSHBACK, str(int(retry_after_s * 1000)))
        return _Status(status.code, status.details, (*status.trailing_metadata, pushback))
    return status


def _retry_after_s(error: CostsimError) -> float | None:
    """After how long a retry of the call may succeed; None when it cannot (or not known)."""
    if isinstance(error, Unavailable | ResourceExhausted):
        return error.retry_after_s
    return None


@dataclass(frozen=True)
class _Status(grpc.Status):
    code: grpc.StatusCode
    details: str
    trailing_metadata: tuple[tuple[str, str | bytes], ...]


def internal_status(error_id: str, request_id: str) -> grpc.Status:
    """A generic INTERNAL status that points at the log line."""
    info = error_details_pb2.ErrorInfo(
        reason="INTERNAL", domain=DOMAIN, metadata={"error_id": error_id, "request_id": request_id}
    )
    status = status_pb2.Status(
        code=code_pb2.INTERNAL,
        message=f"internal error (error id {error_id}); the server log has the details",
        details=[_pack(info)],
    )
    return rpc_status.to_status(status)


def request_id_of(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    """The caller's x-request-id, or a new one."""
    for key, value in context.invocation_metadata() or ():
        if key == REQUEST_ID_HEADER and isinstance(value, str) and value:
            return value[:128]
    return uuid.uuid4().hex


async def abort(exc: Exception, method: str, context: grpc.aio.ServicerContext[Any, Any]) -> None:
    """End the call with the status of ``exc`` (logged; INTERNAL for anything unexpected)."""
    request_id = request_id_of(context)
    if isinstance(exc, CostsimError):
        level = logging.WARNING if isinstance(exc, Unavailable) else logging.INFO
        log.log(level, "%s -> %s (%s) request_id=%s", method, exc.reason, exc.message, request_id)
        await context.abort_with_status(status_of(exc, request_id))  # type: ignore[attr-defined]
    error_id = uuid.uuid4().hex[:12]
    log.error(
        "%s failed: internal error error_id=%s request_id=%s",
        method,
        error_id,
        request_id,
        exc_info=exc,
    )
    await context.abort_with_status(internal_status(error_id, request_id))  # type: ignore[attr-defined]


UnaryMethod = Callable[[Servicer, Request, Any], Awaitable[Response]]
StreamMethod = Callable[[Servicer, Request, Any], AsyncIterator[Response]]


def unary(
    method: UnaryMethod[Servicer, Request, Response],
) -> UnaryMethod[Servicer, Request, Response]:
    """Map errors of a unary-unary method."""

    @functools.wraps(method)
    async def wrapper(self: Servicer, request: Request, context: Any) -> Response:
        try:
            return await method(self, request, context)
        except Exception as exc:
            await abort(exc, method.__name__, context)
            raise AssertionError("abort_with_status returned") from exc

    return wrapper


class Sender(Protocol):
    """What :func:`streaming` needs of the servicer: how long one message may take to leave."""

    send_timeout_s: float

    def stalled(self, method: str) -> ResourceExhausted:
        """The error (counted) for a stream whose reader stopped reading."""


class _SendWatch:
    """Cancels ``task`` once the write it is in (begun at ``since``) has waited ``limit_s``.

    One timer per stream: it fires every ``limit_s`` at most, and while a write is pending
    exactly ``limit_s`` after that write began. Setting ``since`` around each write costs a
    clock read, where a timeout rescheduled per message cost two timer handles.
    """

    __slots__ = ("_handle", "_limit_s", "_loop", "_task", "expired", "since")

    def __init__(
        self, loop: asyncio.AbstractEventLoop, task: asyncio.Task[Any], limit_s: float
    ) -> None:
        self._loop, self._task, self._limit_s = loop, task, limit_s
        self.since: float | None = None
        self.expired = False
        self._handle = loop.call_at(loop.time() + limit_s, self._check)

    def _check(self) -> None:
        since = self.since
        if since is not None and self._loop.time() - since >= self._limit_s:
            self.expired = True
            self._task.cancel()
            return
        start = self._loop.time() if since is None else since
        self._handle = self._loop.call_at(start + self._limit_s, self._check)

    def stop(self) -> None:
        """No more checks."""
        self._handle.cancel()


def streaming(
    method: StreamMethod[SenderT, Request, Response],
) -> StreamMethod[SenderT, Request, Response]:
    """Send a unary-stream method's messages; map its errors, also those after the first message.

    Each message goes out through ``context.write`` bounded by the servicer's
    ``send_timeout_s``: gRPC's flow control makes the write wait while the client reads
    nothing, and a stream whose reader stopped for that long is cut (``RESOURCE_EXHAUSTED``,
    reason ``SLOW_READER``) instead of holding its database connection for ever. A write gRPC
    refuses (the caller cancelled or went away, or the shutdown cancelled the call) ends the call
    quietly: nobody is left to answer, and it is no server error. The method's generator is
    closed before the wrapper returns. The wrapper is an async generator that yields nothing,
    as gRPC and the interceptors expect of a stream.
    """

    @functools.wraps(method)
    async def wrapper(self: SenderT, request: Request, context: Any) -> AsyncIterator[Response]:
        messages = method(self, request, context)
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None, "a gRPC method runs in a task"
        cancelling = task.cancelling()
        # One timer for the whole stream, looking at the write in progress (not at the time
        # the next message takes to be produced): a timer armed and disarmed around each
        # write (asyncio.timeout rescheduled twice per message, earlier asyncio.wait_for per
        # message) was the largest Python cost of a stream after gRPC's own (py-spy).
        watch = _SendWatch(loop, task, self.send_timeout_s)
        try:
            try:
                async for message in messages:
                    watch.since = loop.time()
                    try:
                        await context.write(message)
                    except Exception as exc:
                        # gRPC could not send: the client cancelled or went away, or the
                        # shutdown cancelled the call when its grace ran out. The call is
                        # over and nobody is left to answer: no server error.
                        log.info(
                            "%s ended by its caller or the shutdown (%s)",
                            method.__name__,
                            type(exc).__name__,
                        )
                        break
                    watch.since = None
            except asyncio.CancelledError:
                # Cancelled by the watch alone (not also by gRPC or the shutdown): a reader
                # that read nothing for send_timeout_s.
                if not watch.expired or task.uncancel() > cancelling:
                    raise
                raise self.stalled(method.__name__) from None
            finally:
                watch.stop()
                # Closed here, however the loop ended, so that the stream's clean-up runs now
                # and not later in a task of its own (after a shutdown, its threads are gone).
                if isinstance(messages, AsyncGenerator):
                    await messages.aclose()
        except Exception as exc:
            await abort(exc, method.__name__, context)
        return
        yield  # unreachable: makes this an async generator

    return wrapper
