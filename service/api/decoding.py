"""Each RPC's message limit, and requests that do not decode: refused with a precise status.

gRPC decodes a request before any interceptor's behaviour runs. Left to itself, a request that
protobuf refuses (garbage bytes from a generic client, a ``Struct`` nested past protobuf's
100-level limit, a string that is not UTF-8) ends the call ``UNKNOWN`` with the decoder's
own words, and one receive limit holds for every RPC. :class:`DecodingInterceptor` gives
every unary-request method a deserializer that never raises:

- a request larger than its RPC's :class:`MessageLimit` is not parsed at all: the call ends
  ``RESOURCE_EXHAUSTED``, ErrorInfo reason ``MESSAGE_TOO_LARGE`` with the RPC's limit (and
  no RetryInfo: the same request fails again), as gRPC itself answers a message beyond the
  server's receive limit (which is the largest of these limits);
- a request protobuf cannot parse ends ``INVALID_ARGUMENT``, reason ``MALFORMED_REQUEST``,
  with a BadRequest violation naming the innermost field the wire format shows to be bad
  (``api/wire.py``), else ``request``.

The deserializer returns an :class:`Undecodable` carrying the error, and the method's
behaviour answers it through the one error table (``api/errors.py``) instead of running, so
the metrics interceptor outside counts the call under its real code. The interceptor sits
between metrics and authentication: like gRPC's own checks, bytes that are no request are
refused before anyone is asked who sent them. Client- and bidi-streaming methods (only
server reflection has them) keep their deserializers.

Example:
    >>> limits = MessageLimits(MessageLimit(64, "COSTSIM_MAX_QUERY_MESSAGE_KB"), {})
    >>> decode = guarded(lambda data: data.decode(), "/pkg.Service/Get", limits.of("/x"))
    >>> decode(b"fine")
    'fine'
    >>> decode(b"x" * 65).error.reason
    'MESSAGE_TOO_LARGE'

"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf.descriptor import Descriptor
from google.protobuf.message import DecodeError

from costsim.analytics.v1 import analytics_pb2 as pb
from costsim_analytics.api.errors import abort
from costsim_analytics.api.intercepting import Method, WrappingInterceptor, rebuilt, writing
from costsim_analytics.api.wire import first_problem
from costsim_analytics.engines.errors import (
    CostsimError,
    FieldViolation,
    InvalidArgument,
    MessageTooLarge,
)
from costsim_analytics.settings import Settings

if TYPE_CHECKING:  # generic in grpc-stubs only
    _Handler = grpc.RpcMethodHandler[Any, Any]
else:
    _Handler = grpc.RpcMethodHandler

Context = grpc.aio.ServicerContext[Any, Any]
SERVICE = pb.DESCRIPTOR.services_by_name["AnalyticsService"].full_name
# gRPC's message lengths are 32-bit signed.
MAX_GRPC_MESSAGE = 2**31 - 1
KIB = 1024


def rpc(name: str) -> str:
    """The full method name of an AnalyticsService RPC (``/package.Service/Name``)."""
    return f"/{SERVICE}/{name}"


@dataclass(frozen=True, slots=True)
class MessageLimit:
    """The largest request an RPC accepts, in bytes, and the setting that decides it."""

    bytes: int
    setting: str


@dataclass(frozen=True)
class MessageLimits:
    """The message limit of every method: ``default`` unless ``by_method`` names another."""

    default: MessageLimit
    by_method: Mapping[str, MessageLimit]

    @classmethod
    def of_service(cls, *, query_bytes: int, batch_bytes: int, samples_bytes: int) -> MessageLimits:
        """The AnalyticsService's limits: large for the RPCs that carry records or samples.

        ``query_bytes`` holds for every other method (queries, gets, lists, the golden
        promote/activate/compare calls, health): their requests are names, filters, numbers
        and a page token. ``batch_bytes`` is WriteProvenanceBatch's, ``samples_bytes`` that of
        RunCanary and CreateGoldenDataset. Each is capped at gRPC's 2 GiB.
        """
        cap = MAX_GRPC_MESSAGE
        samples = MessageLimit(min(samples_bytes, cap), "COSTSIM_MAX_SAMPLES_MESSAGE_MB")
        return cls(
            default=MessageLimit(min(query_bytes, cap), "COSTSIM_MAX_QUERY_MESSAGE_KB"),
            by_method={
                rpc("WriteProvenanceBatch"): MessageLimit(
                    min(batch_bytes, cap), "COSTSIM_MAX_BATCH x COSTSIM_MAX_RECORD_KB"
                ),
                rpc("RunCanary"): samples,
                rpc("CreateGoldenDataset"): samples,
            },
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> MessageLimits:
        """The limits the settings give (README, "Message limits").

        WriteProvenanceBatch's follows ``COSTSIM_MAX_BATCH``: room for that many records of
        ``COSTSIM_MAX_RECORD_KB`` each, plus the query limit for the request's other fields.
        """
        query = settings.max_query_message_kb * KIB
        return cls.of_service(
            query_bytes=query,
            batch_bytes=settings.max_batch * settings.max_record_kb * KIB + query,
            samples_bytes=settings.max_samples_message_mb * KIB * KIB,
        )

    def of(self, method: str) -> MessageLimit:
        """The limit of a full method name."""
        return self.by_method.get(method, self.default)

    @property
    def largest(self) -> int:
        """The server-wide receive limit: the largest of the limits, in bytes."""
        return max([self.default.bytes, *(limit.bytes for limit in self.by_method.values())])


@dataclass(frozen=True, slots=True)
class Undecodable:
    """What a guarded deserializer returns instead of raising: the error to answer with."""

    error: CostsimError


def _short(method: str) -> str:
    return method.rsplit("/", 1)[-1]


def _descriptor(deserializer: Callable[[bytes], Any]) -> Descriptor | None:
    """The message type behind a generated ``Message.FromString``, if that is what it is."""
    descriptor = getattr(getattr(deserializer, "__self__", None), "DESCRIPTOR", None)
    return descriptor if isinstance(descriptor, Descriptor) else None


def malformed(data: bytes, descriptor: Descriptor | None, exc: DecodeError) -> InvalidArgument:
    """The INVALID_ARGUMENT for bytes protobuf refused, naming the best path it can."""
    found = None if descriptor is None else first_problem(data, descriptor)
    if found is None:
        # The decoder's own reason ("Wire format was corrupt") without the type's name.
        why = str(exc).rsplit(": ", 1)[-1] or "corrupt wire format"
        found = ("request", f"is not a valid protobuf message: {why}")
    field, description = found
    name = descriptor.name if descriptor is not None else "request"
    return InvalidArgument(
        f"the request is not a valid {name}: {field} {description}",
        [FieldViolation(field, description)],
        reason="MALFORMED_REQUEST",
    )


def guarded(
    deserializer: Callable[[bytes], Any] | None, method: str, limit: MessageLimit
) -> Callable[[bytes], Any]:
    """``deserializer`` checked against ``limit`` first, returning :class:`Undecodable` on error."""
    descriptor = None if deserializer is None else _descriptor(deserializer)

    def decode(data: bytes) -> Any:
        if len(data) > limit.bytes:
            return Undecodable(
                MessageTooLarge(
                    f"{_short(method)} requests are limited to {limit.bytes} bytes "
                    f"({limit.setting}); this one has {len(data)}",
                    metadata={
                        "method": _short(method),
                        "limit_bytes": str(limit.bytes),
                        "size_bytes": str(len(data)),
                        "setting": limit.setting,
                    },
                )
            )
        if deserializer is None:
            return data
        try:
            return deserializer(data)
        except DecodeError as exc:
            return Undecodable(malformed(data, descriptor, exc))

    return decode


def refusing(behavior: Any, method: str) -> Any:
    """``behavior`` that first answers an :class:`Undecodable` request with its error.

    A streaming ``behavior`` is a writer (``intercepting.writing``); so is the result.
    """
    name = _short(method)

    async def call(request: object, context: Context) -> object:
        if isinstance(request, Undecodable):
            await abort(request.error, name, context)
            raise AssertionError("abort_with_status returned")
        return await behavior(request, context)

    return call


class DecodingInterceptor(WrappingInterceptor):
    """Refuses requests over their RPC's limit, or that do not decode (module docstring)."""

    def __init__(self, limits: MessageLimits) -> None:
        super().__init__()
        self._limits = limits

    def wrap(self, method: Method, handler: _Handler) -> _Handler:
        """``handler`` with a deserializer that never raises."""
        if handler.request_streaming:
            return handler
        behavior: Any
        if handler.response_streaming:
            behavior = writing(handler.unary_stream)
            if behavior is None:
                return handler
        else:
            behavior = handler.unary_unary
        full = method.full
        decode = guarded(handler.request_deserializer, full, self._limits.of(full))
        return rebuilt(handler, refusing(behavior, full), request_deserializer=decode)
