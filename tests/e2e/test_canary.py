"""RunCanary end to end: provenance in through gRPC, a canary over it, the report back out;
two server processes on one PostgreSQL database; the CLI."""

from __future__ import annotations

import hashlib
import json
import subprocess
import threading
from pathlib import Path

import grpc
import pytest
from google.protobuf import json_format
from grpc_health.v1 import health_pb2

from costsim.analytics.v1 import analytics_pb2 as pb
from costsim_analytics.engines.canary.synthetic import synthetic_samples
from tests.conftest import truncate_all
from tests.e2e.rpc_errors import details
from tests.e2e.server import CLI, ServerProcess
from tests.factories import plan_payload, provenance_json

SERVING = health_pb2.HealthCheckResponse.SERVING


def write_provenance(stub, n):
    for start in range(0, n, 50):
        request = pb.WriteProvenanceBatchRequest()
        for i in range(start, min(n, start + 50)):
            json_format.ParseDict(
                provenance_json(i, payload=plan_payload(i)), request.records.add()
            )
        stub.WriteProvenanceBatch(request, timeout=30)


def test_canary_over_provenance_is_stored_with_its_artifacts(server, stub):
    write_provenance(stub, 150)
    response = stub.RunCanary(pb.RunCanaryRequest(sample_count=120, seed=7), timeout=120)
    report = response.report
    assert report.sample_source == "provenance"
    assert report.total_samples + report.invalid_samples == 120
    assert report.status in (pb.CANARY_STATUS_PASS, pb.CANARY_STATUS_FAIL)
    assert report.statistics.paired_test.method in ("wilcoxon", "sign", "none")
    assert len(report.reasons) == len(report.failure_reasons)

    found = stub.GetCanaryReport(pb.GetCanaryReportRequest(run_id=report.run_id), timeout=10).report
    assert found == report
    listed = list(stub.QueryCanaryReports(pb.QueryCanaryReportsRequest(), timeout=10))
    assert [m.report.run_id for m in listed] == [report.run_id]
    assert [Path(a.path).name for a in found.artifacts] == [
        "comparisons.jsonl",
        "diffs.jsonl",
        "report.json",
    ]
    # Paths relative to the artifacts root: no absolute server path reaches the caller.
    root = Path(server.env.get("COSTSIM_ARTIFACTS_DIR", "var/artifacts")).resolve()
    assert list(found.artifact_paths) == [a.path for a in found.artifacts]
    assert all(a.path.startswith(f"{report.run_id}/") for a in found.artifacts)
    for artifact in found.artifacts:
        data = (root / artifact.path).read_bytes()
        assert (
            hashlib.sha256(data).hexdigest() == artifact.sha256 and len(data) == artifact.size_bytes
        )
    comparisons = (root / found.artifacts[0].path).read_text().splitlines()
    assert len(comparisons) == 120


def test_run_canary_validation_and_unknown_model(stub):
    cases = {
        "sample_count": pb.RunCanaryRequest(sample_count=100_001),
        "outlier_max_pct": pb.RunCanaryRequest(outlier_max_pct=1.5),
        "candidate_model": pb.RunCanaryRequest(candidate_model="v9"),
    }
    for field, request in cases.items():
        with pytest.raises(grpc.RpcError) as exc:
            stub.RunCanary(request, timeout=30)
        code, _, fields = details(exc.value)
        assert code == grpc.StatusCode.INVALID_ARGUMENT and fields == [field]
    assert list(stub.QueryCanaryReports(pb.QueryCanaryReportsRequest(), timeout=10)) == []


def test_explicit_samples_and_idempotent_retry(stub):
    request = pb.RunCanaryRequest(request_id="deploy-42", min_samples=10)
    for sample_id, plan in synthetic_samples()[:40]:
        sample = request.samples.add(id=sample_id)
        sample.plan_input.update(plan)
    bad = request.samples.add(id="broken")
    bad.plan_input.update({"plan": "not a list", "budget_cents": 5})
    first = stub.RunCanary(request, timeout=60)
    again = stub.RunCanary(request, timeout=60)
    assert first.report.sample_source == "explicit" and first.report.invalid_samples == 1
    assert again.replayed and again.report.run_id == first.report.run_id


def test_two_replicas_run_the_canary_once(postgres_migrated_url, tmp_path):
    from datetime import UTC, datetime

    from costsim_analytics.drivers.database import make_engine
    from costsim_analytics.engines.provenance import ProvenanceInput, prepare_batch
    from costsim_analytics.handlers.uow import SqlAlchemyUnitOfWorkFactory

    engine = make_engine(postgres_migrated_url)
    truncate_all(engine)
    # Samples come from provenance, so the requests are tiny and arrive together; 20,000 of
    # them make the one run that gets the lock take long enough for the others to find it held.
    plans = synthetic_samples()
    records = [
        ProvenanceInput(
            run_id=f"r{i}",
            variant_slug="v2",
            source="sandbox",
            payload={"input": plans[i % len(plans)][1], "output": {}, "status": "success"},
        )
        for i in range(20_000)
    ]
    with SqlAlchemyUnitOfWorkFactory(engine)() as uow:
        uow.provenance.insert_batch(prepare_batch(records, max_batch=20_000, now=datetime.now(UTC)))
        uow.commit()
    engine.dispose()
    env = {
        "COSTSIM_ARTIFACTS_DIR": str(tmp_path / "artifacts"),
        "COSTSIM_CANARY_LOCK_TIMEOUT_S": "0",
        # The three calls each replica gets come from one client: let them all in.
        "COSTSIM_MAX_LONG_CALLS_PER_PRINCIPAL": "4",
    }
    replicas = [
        ServerProcess(postgres_migrated_url, tmp_path / f"replica-{i}.log", **env).start()
        for i in range(2)
    ]
    try:
        for replica in replicas:
            replica.wait_health(SERVING)
        request = pb.RunCanaryRequest(sample_count=20_000)
        barrier = threading.Barrier(6)
        results: list[pb.RunCanaryResponse] = []

        def call(replica: ServerProcess) -> None:
            with replica.channel() as ch:
                stub = replica.stub(ch)
                barrier.wait()
                results.append(stub.RunCanary(request, timeout=300))

        threads = [threading.Thread(target=call, args=(replicas[i % 2],)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        statuses = sorted(r.report.status for r in results)
        ran = [r.report for r in results if r.report.status != pb.CANARY_STATUS_SKIPPED]
        assert len(results) == 6 and len(ran) == 1, statuses
        assert ran[0].total_samples + ran[0].invalid_samples == 20_000
        skipped = [r.report for r in results if r.report.status == pb.CANARY_STATUS_SKIPPED]
        assert skipped and all(
            not s.passed and "in progress" in s.failure_reasons[0] for s in skipped
        )
        with replicas[0].channel() as ch:
            stored = list(
                replicas[0].stub(ch).QueryCanaryReports(pb.QueryCanaryReportsRequest(), timeout=10)
            )
        assert [m.report.run_id for m in stored] == [ran[0].run_id]
    finally:
        for replica in replicas:
            replica.stop()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_cli_canary_run_against_a_server_and_locally(server, database_url, tmp_path):
    samples = tmp_path / "samples.jsonl"
    samples.write_text(
        "\n".join(json.dumps({"id": i, "plan_input": p}) for i, p in synthetic_samples()) + "\n"
    )
    remote = subprocess.run(
        [CLI, "canary", "run", "--target", server.address, "--samples", str(samples), "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    report = json.loads(remote.stdout)
    expected = {
        "CANARY_STATUS_PASS": 0,
        "CANARY_STATUS_FAIL": 1,
        "CANARY_STATUS_INCONCLUSIVE": 5,
    }[report["status"]]
    assert remote.returncode == expected, remote.stderr
    assert report["total_samples"] == 120

    local = subprocess.run(
        [
            CLI,
            "canary",
            "run",
            "--local",
            "--database-url",
            database_url,
            "--artifacts-dir",
            str(tmp_path / "local-artifacts"),
            "--samples",
            str(samples),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert local.returncode == expected, local.stderr
    assert "canary canary-" in local.stdout and "kl_divergence" in local.stdout

    too_few = subprocess.run(
        [
            CLI,
            "canary",
            "run",
            "--target",
            server.address,
            "--samples",
            str(samples),
            "--min-samples",
            "500",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert too_few.returncode == 3 and "INSUFFICIENT_SAMPLES" in too_few.stdout
