"""Traces of a real in-process server, caught by the in-memory exporter, on both databases.

The server runs on the test's main thread (its signal handlers need it); the calls come from a
worker thread over loopback, through raw stubs, both client libraries and the CLI's client.
"""

from __future__ import annotations

import asyncio
import gc
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
from google.protobuf import json_format
from opentelemetry import propagate, trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from sqlalchemy import Engine

from costsim.analytics.v1 import analytics_pb2 as pb
from costsim.analytics.v1 import analytics_pb2_grpc as pb_grpc
from costsim_analytics.api import client as cli_client
from costsim_analytics.api.server import AnalyticsServer
from costsim_analytics.api.tracing import TracingInterceptor
from costsim_analytics.bootstrap import build_server
from costsim_analytics.client import AnalyticsClient, AsyncAnalyticsClient
from costsim_analytics.drivers.database import TRACER_OPTION, make_engine
from costsim_analytics.settings import Settings
from costsim_analytics.tracing import TracedArtifactStore, Tracing
from tests.factories import provenance_json
from tests.security import HS_SECRET, claims, sign

POLICY = """
[[principal]]
id = "sim-writer"
roles = ["writer", "reader", "canary"]
tenants = ["acme"]
"""
SERVICE = "costsim.analytics.v1.AnalyticsService"
T = TypeVar("T")


@dataclass
class Traced:
    """A tracing provider whose spans land in memory."""

    tracing: Tracing
    exporter: InMemorySpanExporter

    def spans(self) -> tuple[ReadableSpan, ...]:
        return self.exporter.get_finished_spans()

    def wait_for(self, name: str, count: int = 1) -> list[ReadableSpan]:
        """The finished spans called ``name``, once ``count`` of them ended (a server span ends
        just after its answer leaves, so the caller may see the answer first)."""
        deadline = time.monotonic() + 10
        while True:
            found = [s for s in self.spans() if s.name == name]
            if len(found) >= count or time.monotonic() > deadline:
                return found
            time.sleep(0.01)


@pytest.fixture
def traced() -> Iterator[Traced]:
    exporter = InMemorySpanExporter()
    tracing = Tracing.with_exporters([(exporter, False)])
    yield Traced(tracing, exporter)
    tracing.shutdown()


def settings_for(database_url: str, tmp_path: Path, *, secured: bool) -> Settings:
    extra: dict[str, Any] = {}
    if secured:
        (tmp_path / "policy.toml").write_text(POLICY)
        (tmp_path / "secret").write_bytes(HS_SECRET + b"\n")
        extra = {
            "policy_file": tmp_path / "policy.toml",
            "jwt_hs256_secret_file": tmp_path / "secret",
        }
    return Settings(
        database_url=database_url,
        listen="127.0.0.1:0",
        http_listen="127.0.0.1:0",
        artifacts_dir=tmp_path / "artifacts",
        health_interval_s=0.2,
        canary_bootstrap_resamples=100,
        canary_permutations=100,
        **extra,
    )


def serve_while(make: Callable[[], AnalyticsServer], calls: Callable[[AnalyticsServer], T]) -> T:
    """Run the server ``make`` builds on this thread's event loop (grpc.aio wants it built on
    the loop it runs on) while ``calls(server)`` runs in a worker thread."""
    thresholds = gc.get_threshold()

    async def main() -> T:
        server = make()
        ready = asyncio.Event()
        address: list[str] = []

        def on_ready(bound: str) -> None:
            address.append(bound)
            ready.set()

        running = asyncio.create_task(server.run(on_ready=on_ready))
        await asyncio.wait_for(ready.wait(), 30)
        try:
            while not server.serving:  # the first database probe
                await asyncio.sleep(0.02)
            return await asyncio.to_thread(calls, server)
        finally:
            server.request_stop()
            await running

    try:
        return asyncio.run(main())
    finally:  # run() tunes the collector for a long-lived server: not for the test process
        gc.unfreeze()
        gc.set_threshold(*thresholds)


def bearer() -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {sign(claims('sim-writer'), HS_SECRET, 'HS256')}"),)


def batch(tenant: str, n: int = 3, request_id: str = "") -> pb.WriteProvenanceBatchRequest:
    request = pb.WriteProvenanceBatchRequest(request_id=request_id)
    for i in range(n):
        record = {**provenance_json(i), "tenant_id": tenant, "run_id": f"secret-run-{i}"}
        json_format.ParseDict(record, request.records.add())
    return request


def children(spans: Sequence[ReadableSpan], parent: ReadableSpan) -> list[ReadableSpan]:
    assert parent.context is not None
    return [s for s in spans if s.parent is not None and s.parent.span_id == parent.context.span_id]


def attrs(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


def values_of(span: ReadableSpan) -> str:
    return repr(dict(span.attributes or {}))


def test_a_write_is_one_server_span_with_its_statements_as_children(
    database_url: str, tmp_path: Path, traced: Traced
):
    engine = make_engine(database_url)
    settings = settings_for(database_url, tmp_path, secured=True)
    caller = traced.tracing.tracer("test")

    def calls(server: AnalyticsServer) -> tuple[Any, str]:
        with grpc.insecure_channel(server.address) as channel:
            stub = pb_grpc.AnalyticsServiceStub(channel)
            with caller.start_as_current_span("caller") as span:
                carried: dict[str, str] = {}
                propagate.inject(carried)
                metadata = (*bearer(), *carried.items(), ("x-request-id", "corr-7"))
                response = stub.WriteProvenanceBatch(
                    batch("acme", request_id="batch-42"), metadata=metadata
                )
                with pytest.raises(grpc.RpcError) as refused:
                    stub.WriteProvenanceBatch(batch("globex"), metadata=bearer())
                with pytest.raises(grpc.RpcError) as invalid:
                    stub.GetCanaryReport(pb.GetCanaryReportRequest(run_id=""), metadata=bearer())
            assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert invalid.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            return response, format(span.get_span_context().trace_id, "032x")

    try:
        response, trace_id = serve_while(
            lambda: build_server(engine, settings, tracing=traced.tracing), calls
        )
    finally:
        engine.dispose()
    assert len(response.ids) == 3

    writes = traced.wait_for(f"{SERVICE}/WriteProvenanceBatch", 2)
    spans = traced.spans()
    [caller_span] = [s for s in spans if s.name == "caller"]
    write, refused = sorted(writes, key=lambda s: s.start_time or 0)
    assert write.kind == trace.SpanKind.SERVER
    assert write.context is not None and caller_span.context is not None
    # The caller's traceparent is honoured: same trace, the caller's span as parent.
    assert format(write.context.trace_id, "032x") == trace_id
    assert write.parent is not None and write.parent.span_id == caller_span.context.span_id
    attributes = dict(write.attributes or {})
    assert attributes == {
        "rpc.system": "grpc",
        "rpc.service": SERVICE,
        "rpc.method": "WriteProvenanceBatch",
        "rpc.grpc.status_code": 0,
        "costsim.request_id": "batch-42",
        "costsim.x_request_id": "corr-7",
        "costsim.principal": "sim-writer",
        "costsim.principal.authenticated_by": "token",
    } | {k: v for k, v in attributes.items() if k not in _EXPECTED_KEYS}
    assert write.status.status_code == trace.StatusCode.UNSET
    assert "authorization" not in values_of(write) and "Bearer" not in values_of(write)

    # Its statements are its children, with placeholders and no parameter values.
    statements = [s for s in spans if s.attributes and "db.statement" in s.attributes]
    mine = children(statements, write)
    assert mine, [s.name for s in spans]
    assert all(s.kind == trace.SpanKind.CLIENT for s in mine)
    inserts = [s for s in mine if "costsim_provenance" in str(attrs(s)["db.statement"])]
    assert inserts, [s.attributes for s in mine]
    if database_url.startswith("postgresql"):
        [copy] = [s for s in mine if s.name.startswith("COPY")]
        assert copy.attributes is not None and copy.attributes["costsim.rows"] == 3
    for statement in statements:
        assert "secret-run-" not in values_of(statement)
        assert statement.context is not None
        assert format(statement.context.trace_id, "032x") != "0" * 32

    # A refusal: the ErrorInfo reason, no ERROR status (the caller's mistake, no server fault).
    assert refused.attributes is not None
    assert refused.attributes["rpc.grpc.status_code"] == grpc.StatusCode.PERMISSION_DENIED.value[0]
    assert refused.attributes["costsim.error.reason"]
    assert refused.status.status_code == trace.StatusCode.UNSET
    [invalid] = traced.wait_for(f"{SERVICE}/GetCanaryReport")
    assert invalid.attributes is not None
    assert invalid.attributes["rpc.grpc.status_code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert invalid.attributes["costsim.error.reason"]
    # Health checks and reflection make no spans (the server probed its database throughout).
    assert not [s for s in spans if "Health" in s.name or "Reflection" in s.name]
    assert not [s for s in statements if s.parent is None]


_EXPECTED_KEYS = {
    "rpc.system",
    "rpc.service",
    "rpc.method",
    "rpc.grpc.status_code",
    "costsim.request_id",
    "costsim.x_request_id",
    "costsim.principal",
    "costsim.principal.authenticated_by",
}


def test_a_canary_run_and_a_report_stream(database_url: str, tmp_path: Path, traced: Traced):
    engine = make_engine(database_url)
    settings = settings_for(database_url, tmp_path, secured=False)

    def calls(server: AnalyticsServer) -> list[pb.QueryCanaryReportsResponse]:
        with grpc.insecure_channel(server.address) as channel:
            stub = pb_grpc.AnalyticsServiceStub(channel)
            stub.RunCanary(pb.RunCanaryRequest(sample_count=40, seed=7))
            return list(stub.QueryCanaryReports(pb.QueryCanaryReportsRequest()))

    try:
        messages = serve_while(
            lambda: build_server(engine, settings, tracing=traced.tracing), calls
        )
    finally:
        engine.dispose()
    assert len(messages) == 1
    spans = traced.spans()
    [run] = traced.wait_for(f"{SERVICE}/RunCanary")
    stages = [e.attributes["costsim.canary.stage"] for e in run.events if e.attributes]
    assert "artifacts and report" in stages
    saves = [s for s in children(spans, run) if s.name == "artifacts.save"]
    # The data files first, then report.json naming their checksums.
    files = [name for s in saves for name in attrs(s)["costsim.artifacts.files"]]
    assert sorted(files) == ["comparisons.jsonl", "diffs.jsonl", "report.json"]
    assert all(attrs(s)["costsim.artifacts.bytes"] > 0 for s in saves)
    assert children(spans, run)

    [stream] = traced.wait_for(f"{SERVICE}/QueryCanaryReports")
    assert stream.kind == trace.SpanKind.SERVER and stream.attributes is not None
    assert stream.attributes["costsim.messages_sent"] == 1
    assert stream.attributes["rpc.grpc.status_code"] == 0
    assert [e.name for e in stream.events] == ["first message"]
    # The select of the stream ran in a worker thread: still the stream span's child.
    selects = [
        s
        for s in children(spans, stream)
        if "costsim_canary_reports" in str((s.attributes or {}).get("db.statement", ""))
    ]
    assert selects


def test_the_client_libraries_and_the_cli_client_propagate_the_trace(
    tmp_path: Path, traced: Traced
):
    url = f"sqlite:///{tmp_path / 'costsim.db'}"
    from costsim_analytics.drivers import schema

    schema.upgrade(url)
    engine = make_engine(url)
    settings = settings_for(url, tmp_path, secured=False)
    caller = traced.tracing.tracer("test")

    def calls(server: AnalyticsServer) -> dict[str, int]:
        address = server.address
        parents: dict[str, int] = {}
        with AnalyticsClient(address) as client, caller.start_as_current_span("sync") as span:
            client.get_drift_stats()
            assert list(client.query_canary_reports()) == []
            parents["sync"] = span.get_span_context().span_id

        async def asynchronous() -> None:
            async with AsyncAnalyticsClient(address) as client:
                with caller.start_as_current_span("aio") as span:
                    await client.get_drift_stats()
                    parents["aio"] = span.get_span_context().span_id

        asyncio.run(asynchronous())
        with cli_client.AnalyticsClient(address) as cli, caller.start_as_current_span("cli"):
            cli.drift_stats()
            parents["cli"] = trace.get_current_span().get_span_context().span_id
        # Outside any span: no traceparent, the server span is a root.
        with AnalyticsClient(address) as client:
            client.get_drift_stats()
        http_url = server.http_url
        request = urllib.request.Request(
            f"{http_url}/", headers={"traceparent": f"00-{'ab' * 16}-{'cd' * 8}-01"}
        )
        with urllib.request.urlopen(request, timeout=10) as answer:
            assert answer.status == 200
        return parents

    try:
        parents = serve_while(lambda: build_server(engine, settings, tracing=traced.tracing), calls)
    finally:
        engine.dispose()
    drift = traced.wait_for(f"{SERVICE}/GetDriftStats", 4)
    by_parent = {s.parent.span_id if s.parent else None for s in drift}
    assert by_parent == {parents["sync"], parents["aio"], parents["cli"], None}
    [stream] = traced.wait_for(f"{SERVICE}/QueryCanaryReports")
    assert stream.parent is not None and stream.parent.span_id == parents["sync"]
    [page] = traced.wait_for("GET /")
    assert page.kind == trace.SpanKind.SERVER and page.context is not None
    assert format(page.context.trace_id, "032x") == "ab" * 16
    assert page.parent is not None and format(page.parent.span_id, "016x") == "cd" * 8
    assert page.attributes is not None and page.attributes["http.response.status_code"] == 200


def _listeners(engine: Engine) -> int:
    return len(engine.dispatch.before_cursor_execute) + len(engine.dispatch.after_cursor_execute)


def test_tracing_off_installs_nothing_and_on_installs_it_all(tmp_path: Path, traced: Traced):
    url = f"sqlite:///{tmp_path / 'costsim.db'}"
    settings = settings_for(url, tmp_path, secured=False)

    async def build(tracing: Tracing | None) -> tuple[AnalyticsServer, Engine]:
        engine = make_engine(url)
        return build_server(engine, settings, tracing=tracing), engine

    off, off_engine = asyncio.run(build(None))
    on, on_engine = asyncio.run(build(traced.tracing))
    try:
        assert not [i for i in off.interceptors if isinstance(i, TracingInterceptor)]
        assert _listeners(off_engine) == 0
        assert TRACER_OPTION not in off_engine.get_execution_options()
        assert isinstance(on.interceptors[0], TracingInterceptor)
        assert _listeners(on_engine) == 2
        assert TRACER_OPTION in on_engine.get_execution_options()
        # And no tracer provider was set for the process by either.
        assert not isinstance(trace.get_tracer_provider(), type(traced.tracing.provider))
    finally:
        for server, engine in ((off, off_engine), (on, on_engine)):
            server._shutdown_pools(wait=True)
            if server._on_stopped is not None:
                server._on_stopped()  # the stream and probe pools
            engine.dispose()
    # The artifact store is wrapped only when traced.
    from costsim_analytics.bootstrap import artifact_store

    assert not isinstance(artifact_store(settings), TracedArtifactStore)
    assert isinstance(artifact_store(settings, traced.tracing), TracedArtifactStore)
