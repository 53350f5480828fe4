"""ExplainCanaryRun end to end, on both databases: a real server, a run made with RunCanary,
then the RPC, the CLI (against the server and --local), the dashboard, and the refusals."""

from __future__ import annotations

import hashlib
import json
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import json_format

from costsim.analytics.v1 import analytics_pb2 as pb
from costsim_analytics.engines.canary.explain import ExplainRun, explain
from costsim_analytics.engines.canary.synthetic import synthetic_samples
from costsim_analytics.engines.reports import report_from_json
from tests.e2e.rpc_errors import details
from tests.e2e.server import CLI, ServerProcess

PLANS = synthetic_samples()[:80]


@pytest.fixture
def artifacts(tmp_path: Path) -> Path:
    return tmp_path / "artifacts"


@pytest.fixture
def server(database_url: str, tmp_path: Path, artifacts: Path) -> Iterator[ServerProcess]:
    with ServerProcess(
        database_url, tmp_path / "server.log", COSTSIM_ARTIFACTS_DIR=str(artifacts)
    ).serving() as proc:
        yield proc


def run_canary(stub) -> pb.CanaryReport:
    request = pb.RunCanaryRequest(min_samples=10, seed=11)
    for sample_id, plan in PLANS:
        request.samples.add(id=sample_id).plan_input.update(plan)
    return stub.RunCanary(request, timeout=120).report


def explain_rpc(stub, run_id: str, **fields) -> list[pb.ExplainCanaryRunResponse]:
    request = pb.ExplainCanaryRunRequest(run_id=run_id, **fields)
    return list(stub.ExplainCanaryRun(request, timeout=60))


def refused(call) -> tuple[grpc.StatusCode, str, list[str]]:
    with pytest.raises(grpc.RpcError) as exc:
        call()
    return details(exc.value)


def test_a_run_is_explained_from_its_artifacts(server, stub, artifacts):
    report = run_canary(stub)
    messages = explain_rpc(stub, report.run_id, top=3)
    assert [m.WhichOneof("item") for m in messages] == ["summary", "sample", "sample", "sample"]
    summary = messages[0].summary
    assert summary.run_id == report.run_id and summary.samples == report.total_samples
    assert summary.group_by == pb.EXPLAIN_GROUP_BY_SKILL and summary.top_samples == 3
    assert sum(g.share for g in summary.groups) == pytest.approx(1.0)
    if summary.flips:
        assert sum(g.flip_share for g in summary.groups) == pytest.approx(1.0)
    for g in summary.groups:
        assert g.share_low <= g.share <= g.share_high
    # The histograms are the report's own: its KL bins, its counts.
    body = json.loads((artifacts / report.run_id / "report.json").read_text())
    kl = next(h for h in summary.histograms if h.name == "kl_divergence")
    assert list(kl.edges) == body["kl_binning"]["edges"]
    assert list(kl.candidate_counts) == body["kl_binning"]["candidate_counts"]
    assert kl.kl == pytest.approx(report.kl_divergence)
    judged = next(h for h in summary.histograms if h.name == "judgement")
    assert judged.method == report.statistics.judgement.kl_bin_method
    # The most drifting first, each with its plan and a breakdown that adds up to its delta.
    samples = [m.sample for m in messages[1:]]
    scores = [(-s.drift_score, -abs(s.cost_delta)) for s in samples]
    assert scores == sorted(scores)
    for s in samples:
        plan = json_format.MessageToDict(s.plan_input)
        assert dict(PLANS)[s.id] == plan
        assert sum(x.cost_delta for x in s.steps) == pytest.approx(s.cost_delta)
    # Re-computable from the artifacts alone: the same answer in this process.
    comparisons = (artifacts / report.run_id / "comparisons.jsonl").read_bytes()
    local = explain(ExplainRun(report.run_id, top=3), report_from_json(body), body, comparisons)
    assert [(g.group, g.share, g.share_low) for g in local.groups] == [
        (g.group, g.share, g.share_low) for g in summary.groups
    ]
    by_position = explain_rpc(stub, report.run_id, group_by=pb.EXPLAIN_GROUP_BY_POSITION)
    groups = [g.group for g in by_position[0].summary.groups]
    assert groups[:2] == ["1", "2"] and len(by_position) == 1 + min(10, report.total_samples)


def test_bad_requests_name_their_field_and_unknown_runs_are_not_found(server, stub):
    report = run_canary(stub)
    for fields, field in (
        ({"run_id": ""}, "run_id"),
        ({"run_id": "x" * 300}, "run_id"),
        ({"run_id": report.run_id, "group_by": 9}, "group_by"),
        ({"run_id": report.run_id, "top": -1}, "top"),
        ({"run_id": report.run_id, "top": 101}, "top"),
    ):
        request = pb.ExplainCanaryRunRequest(**fields)
        code, reason, violations = refused(lambda r=request: list(stub.ExplainCanaryRun(r)))
        assert (code, violations) == (grpc.StatusCode.INVALID_ARGUMENT, [field])
    code, reason, _ = refused(lambda: explain_rpc(stub, "canary-no-such-run"))
    assert (code, reason) == (grpc.StatusCode.NOT_FOUND, "NOT_FOUND")


def _ref(run_id: str, name: str, data: bytes) -> dict[str, object]:
    sha = hashlib.sha256(data).hexdigest()
    return {"path": f"{run_id}/{name}", "sha256": sha, "size_bytes": len(data)}


def test_old_and_altered_runs_say_why_they_cannot_be_explained(
    server, stub, artifacts, database_url
):
    report = run_canary(stub)
    # A run as the versions before per-step estimates wrote it, imported by reconcile.
    old_id = "canary-20260101T000000Z-0ldf0rm4"
    source = artifacts / report.run_id
    rows = [json.loads(line) for line in (source / "comparisons.jsonl").read_text().splitlines()]
    for row in rows:
        for side in ("baseline", "candidate"):
            row[side].pop("steps", None)
            row[side].pop("cumulative_risk", None)
    comparisons = "".join(json.dumps(r) + "\n" for r in rows).encode()
    diffs = (source / "diffs.jsonl").read_bytes()
    body = json.loads((source / "report.json").read_text())
    body["run_id"] = old_id
    body["artifacts"] = [
        _ref(old_id, "comparisons.jsonl", comparisons),
        _ref(old_id, "diffs.jsonl", diffs),
    ]
    body["artifact_paths"] = [a["path"] for a in body["artifacts"]] + [f"{old_id}/report.json"]
    body["request"] = {}
    folder = artifacts / old_id
    folder.mkdir()
    (folder / "comparisons.jsonl").write_bytes(comparisons)
    (folder / "diffs.jsonl").write_bytes(diffs)
    (folder / "report.json").write_text(json.dumps(body))
    done = subprocess.run(
        [CLI, "canary", "reconcile", "--database-url", database_url, "--artifacts-dir",
         str(artifacts), "--json"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert json.loads(done.stdout)["imported"] == [old_id], done.stderr
    code, reason, _ = refused(lambda: explain_rpc(stub, old_id))
    assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "RUN_NOT_EXPLAINABLE")
    # The report page of the old run still answers, with a sentence instead of the section.
    with urllib.request.urlopen(f"{server.http_url}/reports/{old_id}", timeout=30) as page:
        text = page.read().decode()
    assert "Where the drift comes from" in text and "predates per-step estimates" in text
    # An altered artifact is refused too, and says which.
    (source / "comparisons.jsonl").write_bytes(comparisons)
    code, reason, _ = refused(lambda: explain_rpc(stub, report.run_id))
    assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "RUN_NOT_EXPLAINABLE")
    with pytest.raises(urllib.error.HTTPError) as bad:
        urllib.request.urlopen(f"{server.http_url}/reports/{old_id}/drift?top=1000", timeout=30)
    assert bad.value.code == 400 and "top" in bad.value.read().decode()
    assert "Traceback" not in server.log()


def test_cli_explains_against_the_server_and_locally(server, stub, artifacts, database_url):
    report = run_canary(stub)
    remote = subprocess.run(
        [CLI, "canary", "explain", report.run_id, "--target", server.address, "--json",
         "--top", "2"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert remote.returncode == 0, remote.stderr
    lines = [json.loads(line) for line in remote.stdout.splitlines()]
    assert list(lines[0]) == ["summary"] and [list(x) for x in lines[1:]] == [["sample"]] * 2
    local = subprocess.run(
        [CLI, "canary", "explain", report.run_id, "--local", "--database-url", database_url,
         "--artifacts-dir", str(artifacts), "--json", "--top", "2"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert local.returncode == 0, local.stderr
    assert [json.loads(line) for line in local.stdout.splitlines()] == lines
    people = subprocess.run(
        [CLI, "canary", "explain", report.run_id, "--target", server.address,
         "--group-by", "prompt_band"],
        capture_output=True, text=True, timeout=120, check=False, env={"COLUMNS": "160"},
    )  # fmt: skip
    assert people.returncode == 0, people.stderr
    assert "where the drift comes from, by prompt_band" in people.stdout
    assert "(no prompt)" in people.stdout and "judgement: quantile bins" in people.stdout
    missing = subprocess.run(
        [CLI, "canary", "explain", "canary-missing", "--target", server.address],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert missing.returncode == 1 and "NOT_FOUND" in missing.stderr
