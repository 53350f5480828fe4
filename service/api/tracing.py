"""One OpenTelemetry server span per RPC (a grpc.aio interceptor), installed only when traced.

The span is named ``costsim.analytics.v1.AnalyticsService/<Method>`` (the RPC semantic
conventions' ``{rpc.service}/{rpc.method}``), of kind SERVER, a child of the caller's trace
context when the call's metadata carries one (``traceparent``, read by the configured
propagators). Its attributes: ``rpc.system`` (``grpc``), ``rpc.service``, ``rpc.method``,
``rpc.grpc.status_code``; ``costsim.request_id`` (the request's ``request_id`` field, when
it has one) and ``costsim.x_request_id`` (the ``x-request-id`` header, when sent);
``costsim.principal`` and ``costsim.principal.authenticated_by`` once the caller is
authenticated (its id, never a credential); on an error, ``costsim.error.reason`` (the
``google.rpc.ErrorInfo`` reason of the status). Streams: the span lasts until the last message
and carries ``costsim.messages_sent`` and an event at the first message. The status is ERROR
for the codes that mean a server fault (UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL,
UNAVAILABLE, DATA_LOSS), as the conventions say; a caller's mistake leaves it unset.

Why not the maintained ``opentelemetry-instrumentation-grpc`` aio server interceptor: it names
spans with the leading slash (``/costsim.analytics.v1.AnalyticsService/Method``), sees a
status only through ``abort``/``set_code`` on a proxy of the context, so the statuses this
server sends with ``abort_with_status`` (every error: ``api/errors.py``) leave its span at
OK, and it has no place for the request id, the principal or the ErrorInfo reason.

Health checks and reflection (the public methods) make no spans: probes would flood a trace
store with roots.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import grpc
from google.rpc import error_details_pb2, status_pb2
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from costsim_analytics.api.auth import PRINCIPAL
from costsim_analytics.api.dashboard.app import _route_of as route_of
from costsim_analytics.api.dashboard.httpserver import App, Request, Response
from costsim_analytics.api.errors import REQUEST_ID_HEADER
from costsim_analytics.api.intercepting import Method, WrappingInterceptor, rebuilt, writing
from costsim_analytics.api.metrics import code_name
from costsim_analytics.auth import methods

if TYPE_CHECKING:  # generic in grpc-stubs only
    _Handler = grpc.RpcMethodHandler[Any, Any]
else:
    _Handler = grpc.RpcMethodHandler

# The status codes of a server fault (semantic conventions for gRPC server spans).
SERVER_FAULTS = frozenset({"UNKNOWN", "DEADLINE_EXCEEDED", "UNIMPLEMENTED", "INTERNAL"}) | {
    "UNAVAILABLE",
    "DATA_LOSS",
}
_CODES = {code.name: code.value[0] for code in grpc.StatusCode}
_DETAILS_KEY = "grpc-status-details-bin"
MAX_ID_CHARS = 128


def carrier(metadata: Any) -> dict[str, str]:
    """The call's text metadata as the propagators read it (binary ``-bin`` values left out)."""
    return {key: value for key, value in metadata or () if isinstance(value, str)}


def error_reason(context: Any) -> str:
    """The ErrorInfo reason of the status the call was ended with ("" when none)."""
    try:
        trailers = context.trailing_metadata() or ()
    except Exception:  # a context without the method (older grpcio): no reason to add
        return ""
    for key, value in trailers:
        if key == _DETAILS_KEY and isinstance(value, bytes):
            status = status_pb2.Status.FromString(value)
            for detail in status.details:
                info = error_details_pb2.ErrorInfo()
                if detail.Unpack(info):
                    return str(info.reason)
    return ""


def _current(span: trace.Span) -> Any:
    """``span`` made current; its ending and exceptions are the interceptor's own business."""
    return trace.use_span(
        span, end_on_exit=False, record_exception=False, set_status_on_exception=False
    )


class _CountingContext:
    """The servicer context, counting the messages a stream writes (the rest passes through)."""

    def __init__(self, context: Any, span: trace.Span) -> None:
        self._context = context
        self._span = span
        self.sent = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)

    def count(self) -> None:
        """One more message sent (the first one marked by an event)."""
        if not self.sent:
            self._span.add_event("first message")
        self.sent += 1

    async def write(self, message: Any) -> None:
        self.count()
        await self._context.write(message)


class TracingInterceptor(WrappingInterceptor):
    """Opens the server span of every non-public RPC (see the module docstring)."""

    def __init__(self, tracer: trace.Tracer) -> None:
        super().__init__()
        self._tracer = tracer

    def wrap(self, method: Method, handler: _Handler) -> _Handler:
        """``handler``, its behaviour run inside a server span."""
        if methods.is_public(method.full) or handler.request_streaming:
            return handler
        name = method.full.lstrip("/")
        attributes = {
            "rpc.system": "grpc",
            "rpc.service": method.service,
            "rpc.method": method.name,
        }
        if handler.response_streaming:
            behavior = writing(handler.unary_stream)
            if behavior is None:
                return handler
            return rebuilt(handler, self._stream(name, attributes, behavior))
        return rebuilt(handler, self._unary(name, attributes, handler.unary_unary))

    def _start(self, name: str, attributes: Mapping[str, str], request: Any, context: Any) -> Any:
        metadata = carrier(context.invocation_metadata())
        span = self._tracer.start_span(
            name,
            context=propagate.extract(metadata),
            kind=SpanKind.SERVER,
            attributes=attributes,
            record_exception=False,
            set_status_on_exception=False,
        )
        request_id = getattr(request, "request_id", None)
        if isinstance(request_id, str) and request_id:
            span.set_attribute("costsim.request_id", request_id[:MAX_ID_CHARS])
        header = metadata.get(REQUEST_ID_HEADER)
        if header:
            span.set_attribute("costsim.x_request_id", header[:MAX_ID_CHARS])
        return span

    @staticmethod
    def _finish(span: trace.Span, context: Any, exc: BaseException | None) -> None:
        principal = PRINCIPAL.get()
        if principal is not None:
            span.set_attribute("costsim.principal", principal.id)
            span.set_attribute("costsim.principal.authenticated_by", principal.authenticated_by)
        code = code_name(context, exc)
        span.set_attribute("rpc.grpc.status_code", _CODES.get(code, _CODES["UNKNOWN"]))
        if code != "OK":
            reason = error_reason(context)
            if reason:
                span.set_attribute("costsim.error.reason", reason)
            if code in SERVER_FAULTS:
                span.set_status(Status(StatusCode.ERROR, f"{code} {reason}".strip()))
        if exc is not None and not isinstance(exc, grpc.aio.AbortError | GeneratorExit):
            if not isinstance(exc, Exception):  # cancelled: the caller went away
                span.add_event("cancelled")
            else:
                span.record_exception(exc)
        span.end()

    def _unary(self, name: str, attributes: Mapping[str, str], behavior: Any) -> Any:
        finish = self._finish

        async def call(request: Any, context: Any) -> Any:
            span = self._start(name, attributes, request, context)
            with _current(span):
                try:
                    response = await behavior(request, context)
                except BaseException as exc:
                    finish(span, context, exc)
                    raise
                finish(span, context, None)
                return response

        return call

    def _stream(self, name: str, attributes: Mapping[str, str], behavior: Any) -> Any:
        """``behavior`` (a writer: ``intercepting.writing``) in a span counting its messages."""
        finish = self._finish

        async def messages(request: Any, context: Any) -> None:
            span = self._start(name, attributes, request, context)
            counting = _CountingContext(context, span)
            with _current(span):
                try:
                    await behavior(request, counting)
                except BaseException as exc:
                    span.set_attribute("costsim.messages_sent", counting.sent)
                    finish(span, context, exc)
                    raise
                span.set_attribute("costsim.messages_sent", counting.sent)
                finish(span, context, None)

        return messages


# The side port's probes and scrapes make no spans, like the gRPC health checks.
UNTRACED_ROUTES = frozenset({"/healthz", "/readyz", "/metrics"})


def traced_pages(app: App, tracer: trace.Tracer) -> App:
    """The dashboard ``app`` with a server span per page (its ``traceparent`` header honoured).

    Named ``<method> <route>`` (``GET /reports/{run_id}``: the route, never the run id), with
    ``http.request.method``, ``http.route``, ``http.response.status_code``; status ERROR for
    a 5xx. The page's own work (its handler call and statements) are its children.
    """

    async def answer(request: Request) -> Response:
        route = route_of(request.path)
        if route in UNTRACED_ROUTES:
            return await app(request)
        with tracer.start_as_current_span(
            f"{request.method} {route}",
            context=propagate.extract(dict(request.headers)),
            kind=SpanKind.SERVER,
            attributes={"http.request.method": request.method, "http.route": route},
        ) as span:
            response = await app(request)
            span.set_attribute("http.response.status_code", response.status)
            if response.status >= 500:
                span.set_status(Status(StatusCode.ERROR, str(response.status)))
            return response

    return answer
