"""Admission control against the real server: floods and stalled streams take nothing from others.

The data: a few thousand provenance records with padded payloads, so that a stream nobody
reads fills gRPC's flow-control windows and stays open (its server side blocked on a write).
"""

from __future__ import annotations

import statistics
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import grpc
import pytest
from google.protobuf import json_format
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2
from grpc_status import rpc_status
from sqlalchemy import func, select

from costsim.analytics.v1 import analytics_pb2 as pb
from costsim_analytics.drivers.database import make_engine
from costsim_analytics.drivers.models import Provenance
from costsim_analytics.engines.provenance import prepare_batch
from costsim_analytics.handlers.uow import SqlAlchemyUnitOfWorkFactory
from tests.e2e.server import ServerProcess
from tests.factories import T0, plan_payload, provenance_input, provenance_json

SERVING = health_pb2.HealthCheckResponse.SERVING
ROWS = 3000
PAD = "x" * 1500  # ~1.6 KB per message: one unread stream fills its windows


def seed(database_url: str) -> None:
    engine = make_engine(database_url)
    records = [provenance_input(i, payload={**plan_payload(i), "notes": PAD}) for i in range(ROWS)]
    with SqlAlchemyUnitOfWorkFactory(engine)() as uow:
        uow.provenance.insert_batch(prepare_batch(records, max_batch=ROWS, now=T0))
        uow.commit()
    engine.dispose()


def rows(database_url: str) -> int:
    engine = make_engine(database_url)
    with engine.connect() as conn:
        count = conn.execute(select(func.count()).select_from(Provenance)).scalar_one()
    engine.dispose()
    return int(count)


@contextmanager
def serve(database_url: str, tmp_path, **env: str) -> Iterator[ServerProcess]:
    seed(database_url)
    server = ServerProcess(database_url, tmp_path / "server.log", **env).start()
    try:
        server.wait_health(SERVING)
        yield server
    finally:
        server.stop()


def own_channel(server: ServerProcess) -> grpc.Channel:
    """A channel on a connection of its own (in the insecure mode: a principal of its own)."""
    return grpc.insecure_channel(server.address, options=[("grpc.use_local_subchannel_pool", 1)])


def open_stream(stub):
    """A stream that has sent its first message and is then not read."""
    call = stub.QueryProvenance(pb.QueryProvenanceRequest(page_size=ROWS), timeout=120)
    next(call)
    return call


def refusal(exc):
    """The code, ErrorInfo reason and RetryInfo delay (s) of a refused call."""
    status = rpc_status.from_call(exc)
    reason, delay = "", None
    for detail in status.details if status else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason = info.reason
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            detail.Unpack(retry)
            delay = retry.retry_delay.ToTimedelta().total_seconds()
    return exc.code(), reason, delay


def metric(server: ServerProcess, name: str, labels: str) -> float:
    with urllib.request.urlopen(f"{server.http_url}/metrics", timeout=5) as response:
        text = response.read().decode()
    for line in text.splitlines():
        if line.startswith(f"{name}{{{labels}}} "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def wait_metric(server: ServerProcess, name: str, labels: str, value: float) -> None:
    deadline = time.monotonic() + 10
    while metric(server, name, labels) != value and time.monotonic() < deadline:
        time.sleep(0.05)
    assert metric(server, name, labels) == value


@pytest.fixture
def capped(database_url, tmp_path):
    with serve(
        database_url,
        tmp_path,
        COSTSIM_MAX_STREAMS="8",
        COSTSIM_MAX_STREAMS_PER_PRINCIPAL="8",
        COSTSIM_STREAM_SEND_TIMEOUT_S="120",
    ) as server:
        yield server


def test_unary_calls_keep_their_latency_while_one_client_holds_every_stream(capped):
    server = capped
    hog, other = own_channel(server), own_channel(server)
    held, refused = [], []
    try:
        hog_stub = server.stub(hog)
        for _ in range(40):  # asks for five times what the server admits
            try:
                held.append(open_stream(hog_stub))
            except grpc.RpcError as exc:
                refused.append(refusal(exc))
        assert len(held) == 8
        assert set(refused) == {(grpc.StatusCode.RESOURCE_EXHAUSTED, "TOO_MANY_CALLS", 1.0)}

        # Meanwhile another client's short calls: none fails, none waits behind the streams.
        stub = server.stub(other)
        batch = pb.WriteProvenanceBatchRequest()
        json_format.ParseDict(provenance_json(ROWS + 1), batch.records.add())
        calls = [
            lambda: stub.GetDriftStats(pb.GetDriftStatsRequest(), timeout=10),
            lambda: stub.ListGoldenDatasets(pb.ListGoldenDatasetsRequest(), timeout=10),
            lambda: stub.WriteProvenanceBatch(batch, timeout=10),
        ]
        for call in calls:  # warm: first-use costs (connections, imports) are not the point
            call()
        latencies = []
        for i in range(150):
            started = time.perf_counter()
            calls[i % len(calls)]()
            latencies.append(time.perf_counter() - started)
        # Starved by the streams, a call would wait for them (seconds, up to its 10 s timeout);
        # unstarved it takes milliseconds. The bound sits between the two with room for a
        # loaded 2-core CI machine (116-129 ms p99 seen there under other load).
        p99 = statistics.quantiles(latencies, n=100)[98]
        assert p99 < 0.500, f"unary p99 {p99 * 1000:.1f} ms while the streams are held"
        # The probe has a connection of its own: the replica stays in rotation.
        assert server.health() == SERVING
        with urllib.request.urlopen(f"{server.http_url}/readyz", timeout=5) as ready:
            assert ready.status == 200
        assert metric(server, "costsim_calls_in_flight", 'call_class="stream"') == 8
    finally:
        for call in held:
            call.cancel()
        hog.close()
        other.close()
    wait_metric(server, "costsim_calls_in_flight", 'call_class="stream"', 0)
    refusals = 'call_class="stream",reason="TOO_MANY_CALLS"'
    assert metric(server, "costsim_admission_refusals_total", refusals) == 32
    # Every slot came back: the server admits a full set of streams again.
    with own_channel(server) as again:
        streams = [open_stream(server.stub(again)) for _ in range(8)]
        for call in streams:
            call.cancel()


def test_one_principal_is_bounded_below_the_server(database_url, tmp_path):
    with serve(
        database_url, tmp_path, COSTSIM_MAX_STREAMS="8", COSTSIM_MAX_STREAMS_PER_PRINCIPAL="3"
    ) as server:
        first, second = own_channel(server), own_channel(server)
        held = [open_stream(server.stub(first)) for _ in range(3)]
        with pytest.raises(grpc.RpcError) as exc:
            open_stream(server.stub(first))
        assert refusal(exc.value) == (
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "TOO_MANY_CALLS_FOR_PRINCIPAL",
            1.0,
        )
        held += [open_stream(server.stub(second)) for _ in range(3)]  # the other one gets in
        for call in held:
            call.cancel()
        first.close()
        second.close()


def test_a_stream_whose_client_stopped_reading_is_cut_and_frees_its_slot(database_url, tmp_path):
    env = {"COSTSIM_STREAM_SEND_TIMEOUT_S": "0.5"}
    with serve(database_url, tmp_path, **env) as server, own_channel(server) as ch:
        call = open_stream(server.stub(ch))
        # The server gives up on the write and frees the slot while the client sleeps.
        wait_metric(server, "costsim_calls_in_flight", 'call_class="stream"', 0)
        received = 1
        with pytest.raises(grpc.RpcError) as exc:
            for _ in call:  # what was in flight arrives, then the status
                received += 1
        code, reason, delay = refusal(exc.value)
        assert (code, reason, delay) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "SLOW_READER", 0)
        assert received < ROWS
        labels = 'call_class="stream",reason="SLOW_READER"'
        assert metric(server, "costsim_admission_refusals_total", labels) == 1
        # A reader that keeps up gets everything.
        every = server.stub(ch).QueryProvenance(pb.QueryProvenanceRequest(page_size=ROWS))
        assert sum(1 for _ in every) == ROWS


def test_a_flood_of_writes_is_refused_at_once_and_retried_to_exactly_once(database_url, tmp_path):
    with serve(
        database_url,
        tmp_path,
        COSTSIM_MAX_UNARY_CALLS="4",
        COSTSIM_MAX_UNARY_CALLS_PER_PRINCIPAL="4",
    ) as server:
        with own_channel(server) as ch:
            stub = server.stub(ch)

            def batch(n: int) -> pb.WriteProvenanceBatchRequest:
                request = pb.WriteProvenanceBatchRequest(request_id=f"flood-{n}")
                for i in range(200):
                    json_format.ParseDict(
                        provenance_json(10_000 + n * 200 + i), request.records.add()
                    )
                return request

            requests = [batch(n) for n in range(40)]
            futures = [stub.WriteProvenanceBatch.future(r, timeout=30) for r in requests]
            outcomes = []
            for future in futures:
                try:
                    future.result()
                    outcomes.append("ok")
                except grpc.RpcError as exc:
                    code, reason, delay = refusal(exc)
                    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, (code, reason)
                    assert delay == 1.0
                    outcomes.append(reason)
            assert "ok" in outcomes and "TOO_MANY_CALLS" in outcomes, outcomes
            # Each writer retries its refused batch with the same request id: exactly once.
            with ThreadPoolExecutor(4) as pool:
                list(pool.map(retried, [stub] * len(requests), requests))
        assert rows(database_url) == ROWS + 40 * 200
        stored = 'call_class="unary",reason="TOO_MANY_CALLS"'
        assert metric(server, "costsim_admission_refusals_total", stored) == outcomes.count(
            "TOO_MANY_CALLS"
        )


def retried(stub, request) -> pb.WriteProvenanceBatchResponse:
    for _ in range(50):
        try:
            return stub.WriteProvenanceBatch(request, timeout=30)
        except grpc.RpcError as exc:
            code, _reason, delay = refusal(exc)
            if code != grpc.StatusCode.RESOURCE_EXHAUSTED:
                raise
            time.sleep(min(delay or 0.1, 0.2))
    raise AssertionError("never admitted")


def test_refusals_carry_the_resource_exhausted_code_in_the_rpc_metric(database_url, tmp_path):
    with serve(
        database_url, tmp_path, COSTSIM_MAX_STREAMS="1", COSTSIM_MAX_STREAMS_PER_PRINCIPAL="1"
    ) as server:
        with own_channel(server) as ch:
            held = open_stream(server.stub(ch))
            with pytest.raises(grpc.RpcError):
                open_stream(server.stub(ch))
            held.cancel()
        labels = (
            'grpc_code="RESOURCE_EXHAUSTED",grpc_method="QueryProvenance",'
            'grpc_service="costsim.analytics.v1.AnalyticsService",grpc_type="server_stream"'
        )
        # Counted when the server-side call ends, which may be just after the client saw it.
        wait_metric(server, "grpc_server_handled_total", labels, 1)
