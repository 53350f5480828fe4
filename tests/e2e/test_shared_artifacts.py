"""Two server processes on one PostgreSQL database and one S3 bucket (a local moto server).

A canary run made through replica A is promoted and explained through replica B, and an orphan
(its row lost after its artifacts were written) is reconciled by B's configuration; a server
whose object store is unreachable answers RunCanary with UNAVAILABLE and stores nothing.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2
from sqlalchemy import text

from costsim.analytics.v1 import analytics_pb2 as pb
from costsim_analytics.drivers.database import make_engine
from tests.conftest import truncate_all
from tests.e2e.rpc_errors import details
from tests.e2e.server import CLI, ServerProcess
from tests.s3 import MotoServer, aws_env, free_port

SERVING = health_pb2.HealthCheckResponse.SERVING
PREFIX = "shared/canary"


@pytest.fixture
def bucket(postgres_migrated_url: str, s3_server: MotoServer) -> str:
    """An empty database and a new bucket: what both replicas share."""
    engine = make_engine(postgres_migrated_url)
    truncate_all(engine)
    engine.dispose()
    return s3_server.new_bucket()


@pytest.fixture
def replicas(
    postgres_migrated_url: str, bucket: str, s3_server: MotoServer, tmp_path: Path
) -> Iterator[list[ServerProcess]]:
    # Each replica in a working directory of its own: nothing local is shared between them.
    env = {**aws_env(s3_server.endpoint), "COSTSIM_ARTIFACTS_URL": f"s3://{bucket}/{PREFIX}"}
    started = []
    try:
        for name in ("a", "b"):
            (tmp_path / name).mkdir()
            proc = ServerProcess(postgres_migrated_url, tmp_path / f"{name}.log", **env)
            proc.cwd = tmp_path / name
            started.append(proc.start())
        for proc in started:
            proc.wait_health(SERVING)
        yield started
    finally:
        for proc in started:
            proc.stop()


def test_a_run_through_one_replica_is_promoted_explained_and_reconciled_through_the_other(
    replicas, bucket, s3_server, postgres_migrated_url, tmp_path
):
    a, b = replicas
    with a.channel() as ch_a, b.channel() as ch_b:
        stub_a, stub_b = a.stub(ch_a), b.stub(ch_b)
        report = stub_a.RunCanary(pb.RunCanaryRequest(sample_count=60, seed=5), timeout=60).report
        run_id = report.run_id
        keys = sorted(
            o["Key"] for o in s3_server.client().list_objects_v2(Bucket=bucket).get("Contents", [])
        )
        assert keys == sorted(
            f"{PREFIX}/{run_id}/{n}" for n in ("comparisons.jsonl", "diffs.jsonl", "report.json")
        )
        assert all(a.path.startswith(f"{run_id}/") for a in report.artifacts)

        promoted = stub_b.PromoteCanaryRun(
            pb.PromoteCanaryRunRequest(run_id=run_id, name="from-a"), timeout=60
        )
        assert promoted.dataset.name == "from-a" and promoted.dataset.sample_count > 0
        explained = list(stub_b.ExplainCanaryRun(pb.ExplainCanaryRunRequest(run_id=run_id)))
        assert explained and explained[0].WhichOneof("item") == "summary"

        # The row is lost (as when the database failed after the artifacts were written):
        # reconcile with replica B's configuration finds the orphan in the bucket.
        engine = make_engine(postgres_migrated_url)
        with engine.begin() as conn:
            conn.execute(
                text("DELETE FROM costsim_canary_reports WHERE run_id = :r"), {"r": run_id}
            )
        engine.dispose()
        out = subprocess.run(
            [CLI, "canary", "reconcile", "--json", "--database-url", postgres_migrated_url],
            capture_output=True,
            text=True,
            env=b.env,
            cwd=tmp_path / "b",
            timeout=60,
            check=True,
        )
        assert json.loads(out.stdout) == {"imported": [run_id], "present": 0, "corrupt": []}
        found = stub_a.GetCanaryReport(pb.GetCanaryReportRequest(run_id=run_id), timeout=10)
        assert found.report.artifacts == report.artifacts
    # Neither replica wrote artifacts to a local directory.
    assert not (tmp_path / "a" / "var").exists() and not (tmp_path / "b" / "var").exists()


def test_an_unreachable_store_fails_the_run_unavailable_and_stores_nothing(
    postgres_migrated_url, tmp_path
):
    engine = make_engine(postgres_migrated_url)
    truncate_all(engine)
    engine.dispose()
    env = {
        **aws_env(f"http://127.0.0.1:{free_port()}"),  # nothing listens there
        "COSTSIM_ARTIFACTS_URL": "s3://costsim-artifacts/p",
        "COSTSIM_ARTIFACTS_CONNECT_TIMEOUT_S": "1",
        "COSTSIM_ARTIFACTS_MAX_ATTEMPTS": "2",
    }
    server = ServerProcess(postgres_migrated_url, tmp_path / "server.log", **env).start()
    try:
        server.wait_health(SERVING)  # the store is not the server's health: reads still work
        with server.channel() as ch:
            stub = server.stub(ch)
            request = pb.RunCanaryRequest(sample_count=40, request_id="nightly-1")
            with pytest.raises(grpc.RpcError) as exc:
                stub.RunCanary(request, timeout=60)
            code, reason, _ = details(exc.value)
            assert code == grpc.StatusCode.UNAVAILABLE and reason == "ARTIFACT_STORE_UNAVAILABLE"
            assert "127.0.0.1" not in (exc.value.details() or "")
            assert list(stub.QueryCanaryReports(pb.QueryCanaryReportsRequest(), timeout=10)) == []
        engine = make_engine(postgres_migrated_url)
        with engine.connect() as conn:
            keys = conn.execute(text("SELECT count(*) FROM costsim_idempotency_keys")).scalar()
        engine.dispose()
        assert keys == 0  # the request id stays free for the retry
    finally:
        server.stop()
    assert "ARTIFACT_STORE_UNAVAILABLE" in server.log() or "artifact store" in server.log()
