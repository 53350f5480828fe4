"""OpenTelemetry traces: off unless the standard ``OTEL_*`` variables ask for them.

The rule (README, "Tracing"), read once at start-up by :meth:`Tracing.from_env`:

- ``OTEL_SDK_DISABLED=true``: off, whatever else is set;
- ``OTEL_TRACES_EXPORTER`` set: a comma-separated list of ``otlp`` and ``console``; ``none``
  (alone) is off, any other name refuses to start (:class:`TracingConfigError`);
- unset: on with ``otlp`` when ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` or
  ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set, else off;
- ``otlp`` speaks ``OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`` (else ``OTEL_EXPORTER_OTLP_PROTOCOL``):
  ``grpc`` (the default) or ``http/protobuf``; the exporters read their endpoint, headers,
  certificates, compression and timeout from the standard variables themselves;
- the resource: ``OTEL_RESOURCE_ATTRIBUTES`` and ``OTEL_SERVICE_NAME``, the service name
  defaulting to ``costsim-analytics``; the sampler: ``OTEL_TRACES_SAMPLER`` (default
  parent-based always-on); the batch processor: ``OTEL_BSP_*``; the propagators:
  ``OTEL_PROPAGATORS`` (default W3C trace context and baggage).

Off means nothing at all: no tracer provider, no server interceptor, no SQLAlchemy event
listener, no artifact wrapper (``bootstrap.py`` installs each only with a :class:`Tracing`).

Example:
    >>> Tracing.from_env({}) is None
    True
    >>> Tracing.from_env({"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "console"})

"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from opentelemetry import trace

from costsim_analytics.drivers.database import TRACER_OPTION
from costsim_analytics.engines.reports import ArtifactRef

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from sqlalchemy import Engine

    from costsim_analytics.handlers.ports import ArtifactStore

DEFAULT_SERVICE_NAME = "costsim-analytics"
SCOPE = "costsim_analytics"
EXPORTERS = ("otlp", "console")
PROTOCOLS = ("grpc", "http/protobuf")


class TracingConfigError(ValueError):
    """The ``OTEL_*`` variables name an exporter or a protocol this service does not have."""


@dataclass(frozen=True, slots=True)
class TracingConfig:
    """What the ``OTEL_*`` variables ask for (see the module docstring for the rule)."""

    exporters: tuple[str, ...]
    protocol: str = "grpc"

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> TracingConfig | None:
        """The configuration asked for, or None when tracing is off.

        Raises:
            TracingConfigError: an unknown exporter or protocol.

        Example:
            >>> TracingConfig.from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://otel:4317"})
            TracingConfig(exporters=('otlp',), protocol='grpc')
            >>> TracingConfig.from_env({"OTEL_TRACES_EXPORTER": "none"}) is None
            True

        """

        def value(name: str) -> str:
            return environ.get(name, "").strip()

        if value("OTEL_SDK_DISABLED").lower() == "true":
            return None
        listed = value("OTEL_TRACES_EXPORTER")
        if listed:
            names = tuple(dict.fromkeys(n.strip().lower() for n in listed.split(",") if n.strip()))
            if names == ("none",):
                return None
            unknown = [n for n in names if n not in EXPORTERS]
            if unknown:
                raise TracingConfigError(
                    f"OTEL_TRACES_EXPORTER names {', '.join(unknown)}: this service exports"
                    f" traces with {', '.join(EXPORTERS)} (or none)"
                )
        elif value("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or value("OTEL_EXPORTER_OTLP_ENDPOINT"):
            names = ("otlp",)
        else:
            return None
        protocol = (
            value("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
            or value("OTEL_EXPORTER_OTLP_PROTOCOL")
            or "grpc"
        ).lower()
        if "otlp" in names and protocol not in PROTOCOLS:
            raise TracingConfigError(
                f"OTLP protocol {protocol!r}: this service speaks {' or '.join(PROTOCOLS)}"
            )
        return cls(names, protocol)


def _exporter(name: str, protocol: str) -> tuple[SpanExporter, bool]:
    """The exporter called ``name``, and whether it wants a batch processor."""
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        # stderr: the command line's --json answers own stdout.
        return ConsoleSpanExporter(out=sys.stderr), False
    if protocol == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
            OTLPSpanExporter as HttpExporter,
        )

        return HttpExporter(), True
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter(), True


@dataclass(frozen=True)
class Tracing:
    """One tracer provider and what the service makes of it: built only when tracing is on."""

    provider: TracerProvider

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str], service_name: str = DEFAULT_SERVICE_NAME
    ) -> Tracing | None:
        """The provider the ``OTEL_*`` variables ask for; None when tracing is off.

        Raises:
            TracingConfigError: an unknown exporter or protocol.
        """
        config = TracingConfig.from_env(environ)
        if config is None:
            return None
        exporters = [_exporter(name, config.protocol) for name in config.exporters]
        return cls.with_exporters(exporters, service_name, environ)

    @classmethod
    def with_exporters(
        cls,
        exporters: Sequence[tuple[SpanExporter, bool]],
        service_name: str = DEFAULT_SERVICE_NAME,
        environ: Mapping[str, str] | None = None,
    ) -> Tracing:
        """A provider sending to ``exporters`` (each with: batch it or not); for tests, benches.

        ``OTEL_SERVICE_NAME`` and ``OTEL_RESOURCE_ATTRIBUTES`` (read from the process
        environment by the SDK) win over ``service_name``.
        """
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

        resource = Resource.create()
        named = str(resource.attributes.get(SERVICE_NAME, ""))
        if not named or named.startswith("unknown_service"):
            resource = resource.merge(Resource({SERVICE_NAME: service_name}))
        provider = TracerProvider(resource=resource)
        for exporter, batch in exporters:
            processor = BatchSpanProcessor(exporter) if batch else SimpleSpanProcessor(exporter)
            provider.add_span_processor(processor)
        return cls(provider)

    def tracer(self, name: str = SCOPE) -> trace.Tracer:
        """A tracer of this provider."""
        return self.provider.get_tracer(name)

    def install_global(self) -> None:
        """Make this the process's global provider (the command line and ``serve`` do)."""
        trace.set_tracer_provider(self.provider)

    def shutdown(self) -> None:
        """Flush and stop the exporters."""
        self.provider.shutdown()

    def instrument(self, engine: Engine) -> None:
        """Child spans for every statement ``engine`` runs inside a traced call.

        The maintained SQLAlchemy instrumentation's per-engine tracer (its ``EngineTracer``,
        not the instrumentor, which is one per process and also patches ``create_engine`` and
        ``Engine.connect`` everywhere). Statements are recorded as SQLAlchemy sends them: the SQL
        text with its bind markers, never the bound values (the instrumentation's default;
        the SQL commenter stays off). Statements outside any traced call (the health probe,
        partition upkeep) make no spans, so they do not flood the exporter with roots.
        """
        from opentelemetry.instrumentation.sqlalchemy.engine import EngineTracer
        from opentelemetry.metrics import NoOpMeterProvider

        usage = (
            NoOpMeterProvider()
            .get_meter(SCOPE)
            .create_up_down_counter("db.client.connections.usage")
        )
        tracer = _ChildSpansOnly(self.tracer("costsim_analytics.db"))
        EngineTracer(tracer, engine, usage)  # type: ignore[no-untyped-call]
        # For what a driver sends on the raw connection (drivers/database.statement_span).
        engine.update_execution_options(**{TRACER_OPTION: tracer})

    def artifacts(self, store: ArtifactStore) -> ArtifactStore:
        """``store`` with a span around each save, read and verification."""
        return TracedArtifactStore(store, self.tracer())

    def canary_stage(self, stage: str) -> None:
        """A canary run's stage as an event of the current span (``progress`` of the handler)."""
        trace.get_current_span().add_event("canary.stage", {"costsim.canary.stage": stage})


class _ChildSpansOnly(trace.Tracer):
    """A tracer whose spans exist only inside a traced call (else the no-op span)."""

    def __init__(self, tracer: trace.Tracer) -> None:
        self._tracer = tracer

    def start_span(
        self,
        name: str,
        context: Any = None,
        kind: trace.SpanKind = trace.SpanKind.INTERNAL,
        attributes: Any = None,
        links: Any = None,
        start_time: int | None = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
    ) -> trace.Span:
        if not trace.get_current_span(context).get_span_context().is_valid:
            return trace.INVALID_SPAN
        return self._tracer.start_span(
            name,
            context,
            kind,
            attributes,
            links,
            start_time,
            record_exception,
            set_status_on_exception,
        )

    def start_as_current_span(
        self,
        name: str,
        context: Any = None,
        kind: trace.SpanKind = trace.SpanKind.INTERNAL,
        attributes: Any = None,
        links: Any = None,
        start_time: int | None = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
        end_on_exit: bool = True,
    ) -> Any:
        """:meth:`start_span`, made current for a ``with`` block."""
        span = self.start_span(
            name,
            context,
            kind,
            attributes,
            links,
            start_time,
            record_exception,
            set_status_on_exception,
        )
        return trace.use_span(
            span,
            end_on_exit=end_on_exit,
            record_exception=record_exception,
            set_status_on_exception=set_status_on_exception,
        )


class TracedArtifactStore:
    """An :class:`~costsim_analytics.handlers.ports.ArtifactStore` whose I/O makes spans.

    ``artifacts.save`` (the run id, the file names, the bytes), ``artifacts.read`` and
    ``artifacts.verify`` (the run id or path, the bytes); the rest passes straight through.
    """

    def __init__(self, store: ArtifactStore, tracer: trace.Tracer) -> None:
        self._store = store
        self._tracer = tracer

    def _span(self, name: str, **attributes: Any) -> AbstractContextManager[trace.Span]:
        return self._tracer.start_as_current_span(
            name, attributes={f"costsim.artifacts.{k}": v for k, v in attributes.items()}
        )

    @property
    def location(self) -> str:
        """Where the artifacts are, for logs."""
        return self._store.location

    def save(self, run_id: str, files: Mapping[str, bytes]) -> tuple[ArtifactRef, ...]:
        """Write files atomically and return their references (in a span)."""
        size = sum(len(data) for data in files.values())
        with self._span("artifacts.save", run_id=run_id, files=list(files), bytes=size):
            return self._store.save(run_id, files)

    def runs(self) -> Iterator[str]:
        """Run ids that have a report artifact."""
        return self._store.runs()

    def read(self, run_id: str, name: str) -> bytes:
        """One artifact's bytes (in a span)."""
        with self._span("artifacts.read", run_id=run_id, file=name) as span:
            data = self._store.read(run_id, name)
            span.set_attribute("costsim.artifacts.bytes", len(data))
            return data

    def remove(self, run_id: str) -> bool:
        """Delete a run's folder; False when there was none."""
        return self._store.remove(run_id)

    def ref(self, run_id: str, name: str) -> ArtifactRef:
        """The reference (path, checksum, size) of a stored artifact."""
        return self._store.ref(run_id, name)

    def verify(self, ref: ArtifactRef) -> bool:
        """Whether the artifact still matches its checksum (in a span)."""
        with self._span("artifacts.verify", path=ref.path, bytes=ref.size_bytes) as span:
            ok = self._store.verify(ref)
            span.set_attribute("costsim.artifacts.ok", ok)
            return ok
