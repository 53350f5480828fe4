"""The server process with COSTSIM_DATABASE_READ_URLS on a real streaming replica."""

from __future__ import annotations

import re
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from costsim.analytics.v1 import analytics_pb2 as pb
from costsim_analytics.drivers.database import make_engine
from costsim_analytics.drivers.replicas import replica_name
from tests.conftest import truncate_all
from tests.e2e.server import ServerProcess
from tests.replica import StreamingReplica


def fetch(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def reads(server: ServerProcess, target: str) -> float:
    _, text = fetch(f"{server.http_url}/metrics")
    match = re.search(rf'^costsim_database_reads_total{{target="{target}"}} (\S+)$', text, re.M)
    assert match is not None, text
    return float(match.group(1))


def wait_for_line(server: ServerProcess, pattern: str, timeout_s: float = 10.0) -> str:
    deadline = time.monotonic() + timeout_s
    body = ""
    while time.monotonic() < deadline:
        status, body = fetch(f"{server.http_url}/readyz")
        assert status == 200, body  # replicas never make the server unready
        if re.search(pattern, body):
            return body
        time.sleep(0.1)
    raise AssertionError(f"/readyz never matched {pattern!r}:\n{body}")


@pytest.fixture
def routed_server(
    replicated_database: tuple[str, str], replica: StreamingReplica, tmp_path: Path
) -> Iterator[ServerProcess]:
    primary_url, replica_url = replicated_database
    engine = make_engine(primary_url)
    truncate_all(engine)
    engine.dispose()
    replica.wait_caught_up()
    with ServerProcess(
        primary_url,
        tmp_path / "server.log",
        COSTSIM_ARTIFACTS_DIR=str(tmp_path / "artifacts"),
        COSTSIM_DATABASE_READ_URLS=replica_url,
        # Loose: the standby also replays whatever else the shared test server is doing.
        COSTSIM_REPLICA_MAX_LAG_S="60",
    ).serving() as proc:
        yield proc


def test_reads_go_to_the_replica_and_survive_its_loss(
    routed_server: ServerProcess, replica: StreamingReplica
) -> None:
    server = routed_server
    name = re.escape(replica_name(replica.url("x")).removesuffix("/x"))
    body = wait_for_line(server, rf"replica {name}/\S+: lag \d+\.\d+s, usable")
    assert body.startswith("ready\n")
    with server.channel() as channel:
        stub = server.stub(channel)
        run = stub.RunCanary(pb.RunCanaryRequest(sample_count=40, seed=3), timeout=60).report
        # Read at once: the replica may not have replayed the run's row (then the primary
        # answers), but the answer is the row just written either way.
        found = stub.GetCanaryReport(pb.GetCanaryReportRequest(run_id=run.run_id), timeout=10)
        assert found.report.run_id == run.run_id
        replica.wait_caught_up()
        before = reads(server, "replica")
        listed = list(stub.QueryCanaryReports(pb.QueryCanaryReportsRequest(), timeout=10))
        assert [m.report.run_id for m in listed] == [run.run_id]
        assert reads(server, "replica") == before + 1
        _, metrics = fetch(f"{server.http_url}/metrics")
        assert re.search(rf'costsim_replica_usable{{replica="{name}/\S+"}} 1\.0', metrics)
        assert re.search(rf'costsim_replica_lag_seconds{{replica="{name}/\S+"}} \d', metrics)

        replica.stop("immediate")
        try:
            primary_before = reads(server, "primary")
            for _ in range(5):  # reads keep working while the replica is gone
                listed = list(stub.QueryCanaryReports(pb.QueryCanaryReportsRequest(), timeout=10))
                assert [m.report.run_id for m in listed] == [run.run_id]
                found = stub.GetCanaryReport(
                    pb.GetCanaryReportRequest(run_id=run.run_id), timeout=10
                )
                assert found.report.run_id == run.run_id
            assert reads(server, "primary") >= primary_before + 10
            wait_for_line(server, rf"replica {name}/\S+: lag unknown, skipped: unreachable")
        finally:
            replica.start()
        replica.wait_caught_up()
        wait_for_line(server, rf"replica {name}/\S+: lag \d+\.\d+s, usable")
