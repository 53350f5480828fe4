"""The per-call work bounds through the real server, on both databases.

Each call over a bound gets INVALID_ARGUMENT with the bound's reason and the field named, no
row and no artifact folder is left, and /metrics counts the refusal by method and bound.
"""

from __future__ import annotations

import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from costsim.analytics.v1 import analytics_pb2 as pb
from costsim_analytics.engines.canary.synthetic import synthetic_samples
from tests.e2e.rpc_errors import details
from tests.e2e.server import ServerProcess

PLANS = [plan for _, plan in synthetic_samples()]
BOUNDS = {
    "COSTSIM_MAX_SAMPLES": "1000",
    "COSTSIM_MAX_PLAN_BYTES": "8192",
    "COSTSIM_MAX_PLAN_STEPS": "10",
    "COSTSIM_CANARY_MAX_ARTIFACT_MB": "1",
}


@pytest.fixture
def bounded(database_url: str, tmp_path: Path) -> Iterator[ServerProcess]:
    """A server with small bounds and its own artifact root."""
    env = {**BOUNDS, "COSTSIM_ARTIFACTS_DIR": str(tmp_path / "artifacts")}
    with ServerProcess(database_url, tmp_path / "server.log", **env).serving() as proc:
        yield proc


def canary(plans: list[dict[str, Any]]) -> pb.RunCanaryRequest:
    request = pb.RunCanaryRequest(min_samples=1, request_id="bounded-1")
    for i, plan in enumerate(plans):
        request.samples.add(id=f"s{i}").plan_input.update(plan)
    return request


def golden(plans: list[dict[str, Any]]) -> pb.CreateGoldenDatasetRequest:
    request = pb.CreateGoldenDatasetRequest(name="ref", request_id="bounded-2")
    for i, plan in enumerate(plans):
        request.samples.add(id=f"g{i}", expected_cost_cents=1.0).plan_input.update(plan)
    return request


def refused(call: Callable[[], object]) -> tuple[str, list[str], str]:
    """(reason, fields, first description) of a call that must be INVALID_ARGUMENT."""
    with pytest.raises(grpc.RpcError) as exc:
        call()
    code, reason, fields = details(exc.value)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and isinstance(exc.value, grpc.Call)
    status = rpc_status.from_call(exc.value)
    assert status is not None
    bad = error_details_pb2.BadRequest()
    next(d for d in status.details if d.Is(bad.DESCRIPTOR)).Unpack(bad)
    return reason, fields, bad.field_violations[0].description


def stored(stub: Any, artifacts: Path) -> tuple[int, int, int]:
    """(canary reports, golden versions, artifact folders) the server holds."""
    reports = list(stub.QueryCanaryReports(pb.QueryCanaryReportsRequest(), timeout=10))
    versions = stub.ListGoldenDatasets(pb.ListGoldenDatasetsRequest(), timeout=10).datasets
    folders = [p for p in artifacts.iterdir()] if artifacts.is_dir() else []
    return len(reports), len(versions), len(folders)


def test_calls_over_a_bound_are_refused_by_field_and_store_nothing(bounded, tmp_path):
    artifacts = tmp_path / "artifacts"
    small = {"plan": [{"skill": "kv_get"}], "budget_cents": 5}
    big = {**small, "note": "x" * 9000}
    long = {**small, "plan": [{"skill": "kv_get"}] * 11}
    with bounded.channel() as channel:
        stub = bounded.stub(channel)
        before = stored(stub, artifacts)
        assert before == (0, 0, 0)
        run = stub.RunCanary
        cases = [
            (lambda: run(canary([small] * 1001), timeout=60), "TOO_MANY_SAMPLES", ["samples"]),
            (
                lambda: run(pb.RunCanaryRequest(sample_count=1001), timeout=60),
                "TOO_MANY_SAMPLES",
                ["sample_count"],
            ),
            (
                lambda: run(canary([small, small, big, long]), timeout=60),
                "PLAN_TOO_LARGE",
                ["samples[2].plan_input", "samples[3].plan_input"],
            ),
            (
                lambda: run(canary([long]), timeout=60),
                "PLAN_TOO_LARGE",
                ["samples[0].plan_input"],
            ),
            (
                lambda: stub.CreateGoldenDataset(golden([small] * 1001), timeout=60),
                "TOO_MANY_SAMPLES",
                ["samples"],
            ),
            (
                lambda: stub.CreateGoldenDataset(golden([small, big]), timeout=60),
                "PLAN_TOO_LARGE",
                ["samples[1].plan_input"],
            ),
        ]
        for call, reason, fields in cases:
            assert refused(call)[:2] == (reason, fields)

        # 1,000 synthetic plans are over 1 MiB themselves: refused before the models run.
        over = [PLANS[i % len(PLANS)] for i in range(1000)]
        reason, fields, description = refused(lambda: run(canary(over), timeout=60))
        assert (reason, fields) == ("ARTIFACTS_TOO_LARGE", ["samples"])
        assert "at least" in description
        # 850 fit in 1 MiB, but not with their estimates: refused before anything is written.
        reason, fields, description = refused(lambda: run(canary(over[:850]), timeout=60))
        assert (reason, fields) == ("ARTIFACTS_TOO_LARGE", ["samples"])
        assert "at least" not in description

        assert stored(stub, artifacts) == before
        # Within the bounds the same request id runs: no refusal took it.
        response = run(canary(PLANS[:100]), timeout=60)
        assert not response.replayed and response.report.total_samples == 100
        assert stored(stub, artifacts) == (1, 0, 1)

    with urllib.request.urlopen(bounded.http_url + "/metrics", timeout=10) as page:
        text = page.read().decode()
    expected = {
        ("RunCanary", "samples"): 2,
        ("RunCanary", "plan_bytes"): 1,
        ("RunCanary", "plan_steps"): 1,
        ("RunCanary", "artifact_bytes"): 2,
        ("CreateGoldenDataset", "samples"): 1,
        ("CreateGoldenDataset", "plan_bytes"): 1,
        ("CompareGolden", "samples"): 0,
    }
    for (method, bound), count in expected.items():
        line = f'costsim_work_refusals_total{{bound="{bound}",method="{method}"}} {count:.1f}'
        assert line in text, line
