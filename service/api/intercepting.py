"""What the server's interceptors share: a method's names, handlers rebuilt once, streams composed.

Every interceptor of ``api/server.py`` (tracing, metrics, decoding, authentication) wraps the
behaviour of the method handler the next one returns. Two costs of that are paid here once:

- **per call**: grpc.aio asks each interceptor for the handler of every call. The wrapping
  depends only on the method and the handler it wraps, so a :class:`WrappingInterceptor`
  builds it once per method and hands the same handler back while the one it wraps is the same
  object (the servicer's handlers are; so are the wrappings of the interceptors inside).
- **per message**: a server-streaming behaviour wrapped as an async generator that re-yields
  its inner generator's messages costs every message one more generator hop per interceptor.
  :func:`writing` turns the servicer's generator into the writer form grpc.aio also accepts (a
  coroutine that sends each message with ``context.write``, as grpc.aio's own loop over a
  generator does), and the interceptors wrap that coroutine: a message passes through the
  servicer's generator and nothing else, however many interceptors see the call. The
  servicer's generator is closed when the call ends (normally, by an error or cancelled), in
  the call's own task.

Example:
    >>> Method.parse("/costsim.analytics.v1.AnalyticsService/GetCanaryReport").name
    'GetCanaryReport'

"""

from __future__ import annotations

import abc
import contextlib
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc

if TYPE_CHECKING:  # generic in grpc-stubs only
    _Interceptor = grpc.aio.ServerInterceptor[Any, Any]
    _Handler = grpc.RpcMethodHandler[Any, Any]
else:
    _Interceptor = grpc.aio.ServerInterceptor
    _Handler = grpc.RpcMethodHandler

Context = grpc.aio.ServicerContext[Any, Any]
Behavior = Callable[[Any, Context], Any]

# By (request streaming, response streaming): the label, the handler's behaviour attribute and
# the factory that rebuilds such a handler.
KINDS = {
    (False, False): ("unary", "unary_unary", grpc.unary_unary_rpc_method_handler),
    (False, True): ("server_stream", "unary_stream", grpc.unary_stream_rpc_method_handler),
    (True, False): ("client_stream", "stream_unary", grpc.stream_unary_rpc_method_handler),
    (True, True): ("bidi_stream", "stream_stream", grpc.stream_stream_rpc_method_handler),
}


@dataclass(frozen=True, slots=True)
class Method:
    """A full method name (``/package.Service/Name``) and its parts."""

    full: str
    service: str
    name: str

    @classmethod
    def parse(cls, full: str) -> Method:
        """The parts of ``full``."""
        service, _, name = full.lstrip("/").rpartition("/")
        return cls(full, service, name)


def kind_of(handler: _Handler) -> str:
    """The go-grpc-prometheus label of the handler's kind (``unary``, ``server_stream``...)."""
    return KINDS[(handler.request_streaming, handler.response_streaming)][0]


def behavior_of(handler: _Handler) -> Any:
    """The handler's behaviour, whatever its kind."""
    return getattr(handler, KINDS[(handler.request_streaming, handler.response_streaming)][1])


def rebuilt(
    handler: _Handler,
    behavior: Any,
    request_deserializer: Callable[[bytes], Any] | None = None,
) -> _Handler:
    """``handler`` of the same kind and (de)serializers, running ``behavior`` instead.

    ``request_deserializer``, when given, replaces the handler's own.
    """
    _, _, make = KINDS[(handler.request_streaming, handler.response_streaming)]
    return make(
        behavior,
        request_deserializer=request_deserializer or handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


def writing(behavior: Any) -> Behavior | None:
    """A streaming ``behavior`` as a coroutine that writes its messages with ``context.write``.

    A coroutine already is one; an async generator is driven here, once, and closed when the
    call ends; None for a synchronous behaviour (which grpc.aio runs in its thread pool).
    """
    if inspect.iscoroutinefunction(behavior):
        return behavior  # type: ignore[no-any-return]
    if not inspect.isasyncgenfunction(behavior):
        return None

    async def write_all(request: Any, context: Context) -> None:
        messages: AsyncIterator[Any] = behavior(request, context)
        async with contextlib.aclosing(messages):  # type: ignore[type-var]
            async for message in messages:
                await context.write(message)

    return write_all


class WrappingInterceptor(_Interceptor):
    """An interceptor whose wrapping depends only on the method: each one is built once.

    Subclasses say how in :meth:`wrap`; a method they leave alone returns its handler.
    """

    def __init__(self) -> None:
        # By full method name: the handler wrapped and its wrapping.
        self._wrapped: dict[str, tuple[_Handler, _Handler]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[_Handler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> _Handler:
        """The next handler, wrapped (once per method and inner handler)."""
        handler = await continuation(handler_call_details)
        if handler is None:  # an unknown method: grpc answers UNIMPLEMENTED itself
            return handler
        full = handler_call_details.method
        known = self._wrapped.get(full)
        if known is not None and known[0] is handler:
            return known[1]
        wrapped = self.wrap(Method.parse(full), handler)
        self._wrapped[full] = (handler, wrapped)
        return wrapped

    @abc.abstractmethod
    def wrap(self, method: Method, handler: _Handler) -> _Handler:
        """``handler`` with this interceptor's behaviour around its own (or as it is)."""
