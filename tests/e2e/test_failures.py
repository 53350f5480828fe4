"""Database outages, stale schemas and shutdown, against the real server process."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import grpc
import pytest
from google.protobuf import json_format
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2
from grpc_status import rpc_status
from sqlalchemy.engine import make_url

from costsim.analytics.v1 import analytics_pb2 as pb
from costsim_analytics.testing.tcp_proxy import TcpProxy
from tests.e2e.rpc_errors import details
from tests.e2e.server import CLI, ServerProcess
from tests.factories import provenance_json

REPO = Path(__file__).resolve().parents[2]

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def write_request(n=3):
    request = pb.WriteProvenanceBatchRequest()
    for i in range(n):
        json_format.ParseDict(provenance_json(i), request.records.add())
    return request


def test_unreachable_database_is_unavailable_and_not_serving(tmp_path):
    # Nothing listens on port 1: connections are refused at once.
    url = "postgresql+psycopg://postgres@127.0.0.1:1/test"
    server = ServerProcess(url, tmp_path / "server.log").start()
    try:
        server.wait_health(NOT_SERVING)
        with server.channel() as ch:
            stub = server.stub(ch)
            started = time.monotonic()
            for call in (
                lambda: stub.WriteProvenanceBatch(write_request(), timeout=10),
                lambda: list(stub.QueryProvenance(pb.QueryProvenanceRequest(), timeout=10)),
                lambda: stub.GetCanaryReport(pb.GetCanaryReportRequest(run_id="x"), timeout=10),
            ):
                with pytest.raises(grpc.RpcError) as exc:
                    call()
                assert details(exc.value)[:2] == (
                    grpc.StatusCode.UNAVAILABLE,
                    "DATABASE_UNAVAILABLE",
                )
            assert time.monotonic() - started < 10
        # UNAVAILABLE says when to retry, and the README's service config does retry it.
        config = (REPO / "deploy" / "grpc-service-config.json").read_text()
        methods = {m.name for m in pb.DESCRIPTOR.services_by_name["AnalyticsService"].methods}
        named = {n["method"] for c in json.loads(config)["methodConfig"] for n in c["name"]}
        assert named <= methods and "RunCanary" in named
        options = [("grpc.service_config", config), ("grpc.enable_retries", 1)]
        before = server.log().count("GetDriftStats -> DATABASE_UNAVAILABLE")
        with grpc.insecure_channel(server.address, options=options) as ch:
            with pytest.raises(grpc.RpcError) as exc:
                server.stub(ch).GetDriftStats(pb.GetDriftStatsRequest(), timeout=20)
            assert exc.value.code() == grpc.StatusCode.UNAVAILABLE
            assert isinstance(exc.value, grpc.Call)
            status = rpc_status.from_call(exc.value)
            assert status is not None
            assert any(d.Is(error_details_pb2.RetryInfo.DESCRIPTOR) for d in status.details)
        deadline = time.monotonic() + 5
        while server.log().count("GetDriftStats -> DATABASE_UNAVAILABLE") - before < 5:
            assert time.monotonic() < deadline, "the client did not retry 5 times"
            time.sleep(0.05)
    finally:
        server.stop()
    assert "Traceback" not in server.log()


def test_database_lost_mid_test_then_recovers(postgres_migrated_url, tmp_path):
    real = make_url(postgres_migrated_url)
    proxy = TcpProxy((real.host or "127.0.0.1", real.port or 5432))
    url = real.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    server = ServerProcess(url, tmp_path / "server.log").start()
    try:
        server.wait_health(SERVING)
        with server.channel() as ch:
            stub = server.stub(ch)
            assert len(stub.WriteProvenanceBatch(write_request(), timeout=10).ids) == 3
            proxy.down()
            with pytest.raises(grpc.RpcError) as exc:
                stub.WriteProvenanceBatch(write_request(), timeout=15)
            assert details(exc.value)[:2] == (grpc.StatusCode.UNAVAILABLE, "DATABASE_UNAVAILABLE")
            server.wait_health(NOT_SERVING)
            proxy.up()
            server.wait_health(SERVING)
            assert len(stub.WriteProvenanceBatch(write_request(), timeout=10).ids) == 3
    finally:
        server.stop()
        proxy.close()


def test_refuses_to_start_on_a_database_behind_its_migrations(empty_database_url):
    done = subprocess.run(
        [CLI, "serve", "--database-url", empty_database_url, "--listen", "127.0.0.1:0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "costsim-analytics migrate" in done.stderr.replace("\n", " ")


def test_sigterm_drains_in_flight_calls_and_exits_cleanly(database_url, tmp_path):
    server = ServerProcess(
        database_url, tmp_path / "server.log", COSTSIM_GRACE_PERIOD_S="10"
    ).start()
    server.wait_health(SERVING)
    with server.channel() as ch:
        stub = server.stub(ch)
        request = pb.WriteProvenanceBatchRequest()
        for i in range(1000):
            json_format.ParseDict(provenance_json(i), request.records.add())
        future = stub.WriteProvenanceBatch.future(request, timeout=30)
        time.sleep(0.05)
        code = server.stop(signal.SIGTERM)
        # The call in flight when SIGTERM arrived either completed or had not yet been accepted;
        # it never fails half-way with INTERNAL.
        try:
            assert len(future.result().ids) == 1000
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.UNAVAILABLE
    assert code == 0
    log = server.log()
    assert "NOT_SERVING (shutting down)" in log and "stopped" in log


def test_cancelled_stream_stops_its_database_work(postgres_migrated_url, tmp_path):
    from sqlalchemy import text

    from costsim_analytics.drivers.database import make_engine
    from costsim_analytics.engines.provenance import prepare_batch
    from costsim_analytics.handlers.uow import SqlAlchemyUnitOfWorkFactory
    from tests.conftest import truncate_all
    from tests.factories import T0, provenance_input

    engine = make_engine(postgres_migrated_url)
    truncate_all(engine)
    with SqlAlchemyUnitOfWorkFactory(engine)() as uow:
        uow.provenance.insert_batch(
            prepare_batch([provenance_input(i) for i in range(5000)], max_batch=5000, now=T0)
        )
        uow.commit()
    in_stream = text(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
        "AND pid <> pg_backend_pid() AND state IN ('active', 'idle in transaction') "
        "AND (query LIKE '%costsim_provenance%' OR query LIKE 'FETCH%')"
    )
    server = ServerProcess(postgres_migrated_url, tmp_path / "server.log").start()
    try:
        server.wait_health(SERVING)
        with server.channel() as ch:
            call = server.stub(ch).QueryProvenance(
                pb.QueryProvenanceRequest(page_size=5000), timeout=30
            )
            next(iter(call))
            with engine.connect() as conn:  # the stream holds its cursor open meanwhile
                assert conn.execute(in_stream).scalar_one() == 1
            call.cancel()
            deadline = time.monotonic() + 10
            with engine.connect() as conn:
                while conn.execute(in_stream).scalar_one() and time.monotonic() < deadline:
                    conn.rollback()
                    time.sleep(0.05)
                assert conn.execute(in_stream).scalar_one() == 0
    finally:
        server.stop()
        engine.dispose()


def test_old_connections_are_closed_so_clients_rebalance(database_url, tmp_path):
    # A maximum connection age of 1 s: the server sends GOAWAY, the channel leaves READY, and
    # the next call simply opens a new connection (behind a balancer: maybe to another replica).
    server = ServerProcess(
        database_url,
        tmp_path / "server.log",
        COSTSIM_MAX_CONNECTION_AGE_S="1",
        COSTSIM_MAX_CONNECTION_AGE_GRACE_S="1",
    ).start()
    try:
        server.wait_health(SERVING)
        states: list[grpc.ChannelConnectivity] = []
        with server.channel() as ch:
            ch.subscribe(states.append, try_to_connect=True)
            stub = server.stub(ch)
            stub.GetDriftStats(pb.GetDriftStatsRequest(), timeout=10)
            deadline = time.monotonic() + 10
            ready = grpc.ChannelConnectivity.READY
            while not (ready in states and states[-1] != ready):
                assert time.monotonic() < deadline, f"the connection was never closed: {states}"
                time.sleep(0.05)
            assert stub.GetDriftStats(pb.GetDriftStatsRequest(), timeout=10).total == 0
    finally:
        server.stop()
