"""Golden datasets end to end: every RPC over gRPC, a canary judged against a golden version,
the CLI (import, export byte for byte, list, show, activate, compare, promote, report)."""

from __future__ import annotations

import hashlib
import json
import subprocess

import grpc
import pytest
from grpc_health.v1 import health_pb2

from costsim.analytics.v1 import analytics_pb2 as pb
from costsim_analytics.engines.canary.synthetic import synthetic_samples
from costsim_analytics.engines.cost_models import load_cost_model
from costsim_analytics.engines.golden.datasets import GoldenSample, export_jsonl
from tests.e2e.rpc_errors import details
from tests.e2e.server import CLI, ServerProcess
from tests.e2e.test_tools import buf_curl

PLANS = synthetic_samples()


def expectations(model: str, n: int = 60) -> list[GoldenSample]:
    m = load_cost_model(model)
    out = []
    for i, plan in PLANS[:n]:
        e = m.estimate(plan)
        out.append(GoldenSample(i, plan, e.cost_cents, e.feasible, e.duration_ms))
    return out


def create_request(name: str, samples: list[GoldenSample], **kw) -> pb.CreateGoldenDatasetRequest:
    request = pb.CreateGoldenDatasetRequest(name=name, **kw)
    for s in samples:
        msg = request.samples.add(
            id=s.id,
            expected_cost_cents=s.expected_cost_cents,
            expected_feasible=s.expected_feasible,
            expected_duration_ms=s.expected_duration_ms,
        )
        msg.plan_input.update(s.plan_input)
    return request


def canary_request(**kw) -> pb.RunCanaryRequest:
    request = pb.RunCanaryRequest(min_samples=10, **kw)
    for sample_id, plan in PLANS[:60]:
        request.samples.add(id=sample_id).plan_input.update(plan)
    return request


def test_golden_rpcs(stub):
    created = stub.CreateGoldenDataset(create_request("ref", expectations("v1")), timeout=30)
    d = created.dataset
    assert (d.name, d.version, d.active, d.sample_count, d.source) == ("ref", 1, True, 60, "import")
    assert d.sha256 == hashlib.sha256(export_jsonl(expectations("v1"))).hexdigest()
    assert not d.samples and not created.replayed

    with pytest.raises(grpc.RpcError) as exc:
        stub.CreateGoldenDataset(create_request("ref", expectations("v1")), timeout=30)
    assert details(exc.value)[:2] == (grpc.StatusCode.ALREADY_EXISTS, "ALREADY_EXISTS")

    bad = expectations("v1", 4)
    bad[1] = GoldenSample("x", bad[1].plan_input, -5, True)
    bad[3] = GoldenSample("y", {"plan": "no", "budget_cents": 1}, 1, True)
    with pytest.raises(grpc.RpcError) as exc:
        stub.CreateGoldenDataset(create_request("bad name!", bad), timeout=30)
    code, reason, fields = details(exc.value)
    assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT")
    assert fields == ["name", "samples[1].expected_cost_cents", "samples[3].plan_input"]

    v2 = stub.CreateGoldenDataset(create_request("ref", expectations("v2")), timeout=30).dataset
    assert (v2.version, v2.active) == (2, False)

    got = stub.GetGoldenDataset(pb.GetGoldenDatasetRequest(name="ref"), timeout=30).dataset
    assert got.version == 1 and len(got.samples) == 60
    assert [s.id for s in got.samples] == sorted(s.id for s in expectations("v1"))
    one = stub.GetGoldenDataset(pb.GetGoldenDatasetRequest(name="ref", version=2), timeout=30)
    assert one.dataset.sha256 == v2.sha256
    for request in (
        pb.GetGoldenDatasetRequest(name="nope"),
        pb.GetGoldenDatasetRequest(name="ref", version=7),
    ):
        with pytest.raises(grpc.RpcError) as exc:
            stub.GetGoldenDataset(request, timeout=30)
        assert details(exc.value)[:2] == (grpc.StatusCode.NOT_FOUND, "NOT_FOUND")

    compared = stub.CompareGolden(pb.CompareGoldenRequest(name="ref"), timeout=60).comparison
    assert (compared.candidate_model, compared.baseline_model) == ("v2", "v1")
    assert not compared.passed and compared.direction == "away"
    assert compared.reasons[0].code == "GOLDEN_COMPARISON_FAILED"
    assert len(compared.worst_samples) == 10
    assert compared.baseline.within_tolerance_share == 1.0
    loose = stub.CompareGolden(
        pb.CompareGoldenRequest(name="ref", tolerance=100, max_feasibility_flips=100), timeout=60
    )
    assert loose.comparison.passed
    with pytest.raises(grpc.RpcError) as exc:
        stub.CompareGolden(pb.CompareGoldenRequest(name="ref", min_share=2), timeout=30)
    assert details(exc.value)[2] == ["min_share"]

    active = stub.ActivateGoldenDataset(
        pb.ActivateGoldenDatasetRequest(name="ref", version=2), timeout=30
    ).dataset
    assert (active.version, active.active) == (2, True)
    listed = stub.ListGoldenDatasets(pb.ListGoldenDatasetsRequest(), timeout=30).datasets
    assert [(x.name, x.version, x.active) for x in listed] == [("ref", 1, False), ("ref", 2, True)]
    assert stub.CompareGolden(pb.CompareGoldenRequest(name="ref"), timeout=60).comparison.passed


def test_canary_with_a_golden_dataset_over_grpc(stub):
    stub.CreateGoldenDataset(create_request("ref", expectations("v1")), timeout=30)
    run = stub.RunCanary(canary_request(golden_dataset="ref"), timeout=120).report
    g = run.golden_comparison
    assert (g.dataset_name, g.dataset_version) == ("ref", 1) and not g.passed
    assert run.status == pb.CANARY_STATUS_FAIL
    assert "GOLDEN_COMPARISON_FAILED" in [r.code for r in run.reasons]
    found = stub.GetCanaryReport(pb.GetCanaryReportRequest(run_id=run.run_id), timeout=30).report
    assert found == run and found.golden_comparison.dataset_sha256 == g.dataset_sha256
    [listed] = stub.QueryCanaryReports(pb.QueryCanaryReportsRequest(), timeout=30)
    assert listed.report.golden_comparison == g

    with pytest.raises(grpc.RpcError) as exc:
        stub.RunCanary(canary_request(golden_dataset="missing"), timeout=60)
    assert details(exc.value)[:2] == (grpc.StatusCode.NOT_FOUND, "NOT_FOUND")
    without = stub.RunCanary(canary_request(), timeout=120).report
    assert not without.HasField("golden_comparison")

    promoted = stub.PromoteCanaryRun(
        pb.PromoteCanaryRunRequest(run_id=run.run_id, name="promoted"), timeout=30
    ).dataset
    assert (promoted.version, promoted.source) == (1, f"promote:{run.run_id}")
    # The baseline (V1) outputs of that run are exactly the "ref" expectations.
    ref = stub.GetGoldenDataset(pb.GetGoldenDatasetRequest(name="ref"), timeout=30).dataset
    assert promoted.sha256 == ref.sha256


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_configured_default_golden_dataset(database_url, tmp_path):
    proc = ServerProcess(
        database_url,
        tmp_path / "server.log",
        COSTSIM_ARTIFACTS_DIR=str(tmp_path / "artifacts"),
        COSTSIM_CANARY_GOLDEN_DATASET="nightly",
        COSTSIM_GOLDEN_MIN_SHARE="0.0",
        COSTSIM_GOLDEN_MAX_FEASIBILITY_FLIPS="1000",
    ).start()
    try:
        proc.wait_health(health_pb2.HealthCheckResponse.SERVING)
        with proc.channel() as channel:
            stub = proc.stub(channel)
            stub.CreateGoldenDataset(create_request("nightly", expectations("v1")), timeout=30)
            report = stub.RunCanary(canary_request(), timeout=120).report
            g = report.golden_comparison
            assert g.dataset_name == "nightly" and g.passed  # the configured thresholds apply
            assert (g.min_share, g.max_feasibility_flips) == (0.0, 1000)
    finally:
        proc.stop()


def run_cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CLI, *args], capture_output=True, text=True, timeout=120, input=stdin, check=False
    )


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_cli_golden_commands(server, tmp_path):
    target = ["--target", server.address]
    source = tmp_path / "golden.jsonl"
    source.write_bytes(export_jsonl(expectations("v1")))

    imported = run_cli("golden", "import", str(source), "--name", "ref", "--json", *target)
    assert imported.returncode == 0, imported.stderr
    first = json.loads(imported.stdout)["dataset"]
    assert (first["version"], first["active"]) == (1, True)
    again = run_cli("golden", "import", str(source), "--name", "ref", *target)
    assert again.returncode == 1 and "ALREADY_EXISTS" in again.stderr

    exported = tmp_path / "out.jsonl"
    out = run_cli("golden", "export", "ref", "--output", str(exported), *target)
    assert out.returncode == 0, out.stderr
    assert exported.read_bytes() == source.read_bytes()  # byte for byte
    to_stdout = subprocess.run(
        [CLI, "golden", "export", "ref", *target], capture_output=True, timeout=60, check=True
    )
    assert to_stdout.stdout == source.read_bytes()

    second = tmp_path / "v2.jsonl"
    second.write_bytes(export_jsonl(expectations("v2")))
    assert run_cli("golden", "import", str(second), "--name", "ref", *target).returncode == 0
    listed = run_cli("golden", "list", *target)
    assert listed.returncode == 0 and "ref" in listed.stdout and "import" in listed.stdout
    shown = run_cli("golden", "show", "ref", "--version", "2", "--json", *target)
    assert json.loads(shown.stdout)["version"] == 2

    failing = run_cli("golden", "compare", "ref", *target)
    assert failing.returncode == 1, failing.stderr
    assert "fail" in failing.stdout and "worst samples" in failing.stdout
    assert "GOLDEN_COMPARISON_FAILED" in failing.stdout
    assert run_cli("golden", "activate", "ref", "2", *target).returncode == 0
    passing = run_cli("golden", "compare", "ref", "--json", *target)
    assert passing.returncode == 0 and json.loads(passing.stdout)["dataset_version"] == 2

    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        '{"id": "a", "expected_cost_cents": -1, "expected_feasible": true, '
        '"plan_input": {"plan": [], "budget_cents": 1}}\n'
    )
    refused = run_cli("golden", "import", str(bad), "--name", "ref", *target)
    assert refused.returncode == 1 and "samples[0].expected_cost_cents" in refused.stderr

    # A canary run judged against the active version, shown by `report`, then promoted.
    samples = tmp_path / "samples.jsonl"
    samples.write_text("".join(json.dumps({"id": i, "plan_input": p}) + "\n" for i, p in PLANS))
    with server.channel() as channel:
        stub = server.stub(channel)
        run = stub.RunCanary(canary_request(golden_dataset="ref"), timeout=120).report
    report = run_cli("report", run.run_id, "--json", *target)
    golden = json.loads(report.stdout)["golden_comparison"]
    assert (golden["dataset_name"], golden["dataset_version"]) == ("ref", 2)
    table = run_cli("report", run.run_id, *target)
    assert "golden_comparison" in table.stdout and "dataset_sha256" in table.stdout
    promoted = run_cli("golden", "promote", run.run_id, "--name", "promoted", *target)
    assert promoted.returncode == 0, promoted.stderr
    assert "golden promoted v1" in promoted.stdout


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_buf_curl_golden(server):
    created = buf_curl(
        server.address,
        "CreateGoldenDataset",
        {
            "name": "ref",
            "samples": [
                {
                    "id": "s1",
                    "planInput": {"plan": [{"skill": "kv_get"}], "budget_cents": 10},
                    "expectedCostCents": 0,
                    "expectedFeasible": True,
                }
            ],
        },
    )
    assert created.returncode == 0, created.stderr
    assert json.loads(created.stdout)["dataset"]["version"] == 1
    compared = buf_curl(server.address, "CompareGolden", {"name": "ref"})
    assert compared.returncode == 0, compared.stderr
    assert json.loads(compared.stdout)["comparison"]["passed"] is True
    missing = buf_curl(server.address, "GetGoldenDataset", {"name": "nope"})
    assert missing.returncode != 0 and "not_found" in missing.stderr.lower()
