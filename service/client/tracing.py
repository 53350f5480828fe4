"""The caller's trace context on outgoing calls, when ``opentelemetry-api`` is installed.

The client library does not require OpenTelemetry: without it (the base install) calls carry
no trace context and nothing is imported. With it, every call carries the W3C
``traceparent`` (and ``tracestate``, baggage: whatever ``OTEL_PROPAGATORS`` configures) of
the span current where the call is made, so the server's span is that span's child.

Example:
    >>> trace_metadata()  # no span is current here
    ()

"""

from __future__ import annotations

import functools
from collections.abc import Callable

Metadata = tuple[tuple[str, str], ...]


@functools.cache
def _propagation() -> Callable[[], Metadata] | None:
    """How to read the current trace context; None without opentelemetry-api."""
    try:
        from opentelemetry import propagate, trace
    except ImportError:
        return None

    def current() -> Metadata:
        if not trace.get_current_span().get_span_context().is_valid:
            return ()
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        return tuple(carrier.items())

    return current


def trace_metadata() -> Metadata:
    """The metadata carrying the current span's trace context (empty without one)."""
    current = _propagation()
    return () if current is None else current()
