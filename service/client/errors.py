"""What the client raises: a small hierarchy that carries the server's reason and fields.

::

    ClientError                     base of everything this package raises
     ├── RpcError                   the server (or gRPC) answered a call with a non-OK status:
     │    │                         ``code``, ``reason`` (the ErrorInfo reason), ``message``,
     │    │                         ``metadata``, ``violations``, ``retry_delay_s``
     │    ├── InvalidArgumentError  INVALID_ARGUMENT; ``violations`` names the fields
     │    │    └── InvalidRecordError  a record refused locally, by ``ProvenanceWriter.add()``
     │    ├── NotFoundError         NOT_FOUND
     │    ├── AlreadyExistsError    ALREADY_EXISTS (``REQUEST_ID_REUSED`` among them)
     │    ├── FailedPreconditionError  FAILED_PRECONDITION
     │    ├── PermissionDeniedError PERMISSION_DENIED (``violations``: refused records' tenants)
     │    ├── UnauthenticatedError  UNAUTHENTICATED
     │    ├── RetryableError        worth another try later:
     │    │    ├── UnavailableError         UNAVAILABLE
     │    │    ├── ResourceExhaustedError   RESOURCE_EXHAUSTED (``retryable`` is False for a
     │    │    │                            message over the size limit)
     │    │    └── DeadlineExceededError    DEADLINE_EXCEEDED
     │    └── ServerError           INTERNAL, UNKNOWN and every other code
     ├── WriterFullError            ``add(block=False)`` (or its timeout) found the buffer full
     ├── WriterClosedError          the writer is closed, or stopped by an earlier failure
     ├── FlushTimeoutError          ``flush()``/``close()`` ran out of time; ``pending`` records
     └── SpoolError                 the spool cannot be opened or written
          └── SpoolLockedError      another process has the spool open

Example:
    >>> try:  # doctest: +SKIP
    ...     client.get_canary_report("no-such-run")
    ... except NotFoundError as exc:
    ...     print(exc.reason, exc.message)
    NOT_FOUND canary report 'no-such-run' not found

"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import grpc
from google.rpc import error_details_pb2, status_pb2

_STATUS_DETAILS = "grpc-status-details-bin"
_PUSHBACK = "grpc-retry-pushback-ms"
# gRPC's own refusal of a message over the size limit, and a server's name for it: never
# worth a retry with the same message.
MESSAGE_TOO_LARGE = "MESSAGE_TOO_LARGE"


@dataclass(frozen=True, slots=True)
class FieldViolation:
    """One refused field, by its path in the request (``records[3].v1_cost``)."""

    field: str
    description: str


class ClientError(Exception):
    """Base of every error this package raises."""


class RpcError(ClientError):
    """A call ended with a non-OK status.

    Attributes:
        code: the gRPC status code.
        message: the status message.
        reason: the ``google.rpc.ErrorInfo`` reason (``DATABASE_UNAVAILABLE``), else the
            code's name.
        metadata: the ErrorInfo metadata (``request_id``, ``class``, ...).
        violations: the ``google.rpc.BadRequest`` field violations, in order.
        retry_delay_s: the ``google.rpc.RetryInfo`` delay (or the pushback trailer), if any.
    """

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        *,
        reason: str = "",
        metadata: Mapping[str, str] | None = None,
        violations: Iterable[FieldViolation] = (),
        retry_delay_s: float | None = None,
    ) -> None:
        self.code = code
        self.message = message
        self.reason = reason or code.name
        self.metadata = dict(metadata or {})
        self.violations = tuple(violations)
        self.retry_delay_s = retry_delay_s
        super().__init__(f"{code.name} ({self.reason}): {message}")

    @property
    def retryable(self) -> bool:
        """Whether the same call may succeed later (see :class:`RetryableError`)."""
        return False


class InvalidArgumentError(RpcError):
    """The request was malformed; ``violations`` names every offending field."""


class InvalidRecordError(InvalidArgumentError):
    """A record that the server's own rules refuse, caught before it was buffered.

    Field paths name the record's fields (``v1_cost``, ``payload.status``).
    """


class NotFoundError(RpcError):
    """The named thing does not exist."""


class AlreadyExistsError(RpcError):
    """A unique key or request id is taken (``REQUEST_ID_REUSED``: by a different request)."""


class FailedPreconditionError(RpcError):
    """The server is not in a state to do this (``SCHEMA_OUT_OF_DATE``, ...)."""


class PermissionDeniedError(RpcError):
    """The caller may not do this; ``violations`` names refused fields (record tenants)."""


class UnauthenticatedError(RpcError):
    """The server did not accept the credentials (missing, expired, wrong audience...)."""


class RetryableError(RpcError):
    """The server could not do it now: the same call may succeed after ``retry_delay_s``."""

    @property
    def retryable(self) -> bool:
        """True."""
        return True


class UnavailableError(RetryableError):
    """UNAVAILABLE: the server or its database is down, restarting or unreachable."""


class ResourceExhaustedError(RetryableError):
    """RESOURCE_EXHAUSTED: admission control refused the call, or a message was too large.

    Admission control (``TOO_MANY_CALLS``, ``TOO_MANY_CALLS_FOR_PRINCIPAL``, ``SLOW_READER``)
    says when to retry; a message over a size limit is the same next time, so it is not
    retryable.
    """

    @property
    def retryable(self) -> bool:
        """False for a message over the size limit; else whether a retry delay was given."""
        if self.reason == MESSAGE_TOO_LARGE:
            return False
        return self.retry_delay_s is not None


class DeadlineExceededError(RetryableError):
    """The call's deadline passed (nothing was written by the server when it says so)."""


class ServerError(RpcError):
    """INTERNAL, UNKNOWN or a code this client does not expect; ``metadata`` has an error id."""


class WriterFullError(ClientError):
    """The writer's buffer is full: ``add(block=False)`` or its ``timeout_s`` ran out."""


class WriterClosedError(ClientError):
    """The writer is closed, or stopped by an error it cannot recover from (the cause)."""


class FlushTimeoutError(ClientError):
    """``flush()`` or ``close()`` ran out of time with ``pending`` records not acknowledged."""

    def __init__(self, message: str, pending: int) -> None:
        super().__init__(message)
        self.pending = pending


class SpoolError(ClientError):
    """The spool cannot be opened, read or written."""


class SpoolLockedError(SpoolError):
    """Another writer (in this or another process) has the spool open."""


_BY_CODE: dict[grpc.StatusCode, type[RpcError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.OUT_OF_RANGE: InvalidArgumentError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExistsError,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPreconditionError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
    grpc.StatusCode.UNAUTHENTICATED: UnauthenticatedError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
}


def _trailers(error: Any) -> list[tuple[str, str | bytes]]:
    try:
        trailers = error.trailing_metadata()
    except Exception:  # a locally made error (channel closed) may have none
        return []
    return [(str(key), value) for key, value in (trailers or ())]


def from_grpc(error: grpc.RpcError) -> RpcError:
    """The client error for a failed call (sync ``grpc.Call`` or ``grpc.aio.AioRpcError``).

    Decodes the ``google.rpc.Status`` details the server sends (ErrorInfo, BadRequest,
    RetryInfo) and the pushback trailer gRPC's own retries read.
    """
    code_of = getattr(error, "code", None)
    code = code_of() if callable(code_of) else grpc.StatusCode.UNKNOWN
    if not isinstance(code, grpc.StatusCode):
        code = grpc.StatusCode.UNKNOWN
    details_of = getattr(error, "details", None)
    message = (details_of() if callable(details_of) else None) or str(error)
    reason = ""
    metadata: dict[str, str] = {}
    violations: list[FieldViolation] = []
    delay: float | None = None
    for key, value in _trailers(error):
        if key == _STATUS_DETAILS and isinstance(value, bytes):
            status = status_pb2.Status.FromString(value)
            for detail in status.details:
                if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                    info = error_details_pb2.ErrorInfo()
                    detail.Unpack(info)
                    reason, metadata = info.reason, dict(info.metadata)
                elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                    bad = error_details_pb2.BadRequest()
                    detail.Unpack(bad)
                    violations += [
                        FieldViolation(v.field, v.description) for v in bad.field_violations
                    ]
                elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                    retry = error_details_pb2.RetryInfo()
                    detail.Unpack(retry)
                    delay = retry.retry_delay.ToTimedelta().total_seconds()
        elif key == _PUSHBACK and delay is None:
            text = value.decode() if isinstance(value, bytes) else value
            if text.isdigit():
                delay = int(text) / 1000
    if code is grpc.StatusCode.RESOURCE_EXHAUSTED and not reason and "larger than" in message:
        reason = MESSAGE_TOO_LARGE  # gRPC's own words: "Received message larger than max"
    cls = _BY_CODE.get(code, ServerError)
    return cls(
        code, message, reason=reason, metadata=metadata, violations=violations, retry_delay_s=delay
    )
