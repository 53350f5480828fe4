"""The HTTP side port of the real server process: pages in a real headless Chromium, /metrics,
/healthz and /readyz.

The screenshots are kept in test-artifacts/dashboard/ (one per page and backend). Without a
Chromium the browser test is skipped locally and fails under CI=true (.ci/run installs one).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from html.parser import HTMLParser
from pathlib import Path

import grpc
import pytest
from google.protobuf import json_format

from costsim.analytics.v1 import analytics_pb2 as pb
from costsim_analytics.engines.canary.synthetic import synthetic_samples
from costsim_analytics.engines.cost_models import load_cost_model
from tests.conftest import IN_CI
from tests.e2e.server import ServerProcess
from tests.factories import provenance_json

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts" / "dashboard"
PLANS = synthetic_samples()[:60]
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
)


def chromium() -> str:
    """The browser binary: COSTSIM_TEST_CHROMIUM, else chromium on PATH."""
    for candidate in (os.environ.get("COSTSIM_TEST_CHROMIUM", ""), "chromium", "chromium-browser"):
        if candidate and (found := shutil.which(candidate)):
            return found
    message = "no Chromium (apt-get install chromium, or set COSTSIM_TEST_CHROMIUM)"
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


class Browser:
    """Headless Chromium, one fresh profile per test."""

    def __init__(self, binary: str, profile: Path) -> None:
        self.binary = binary
        self.profile = profile

    def _run(self, *args: str) -> str:
        done = subprocess.run(
            [self.binary, *CHROMIUM_FLAGS, f"--user-data-dir={self.profile}", *args],
            capture_output=True,
            text=True,
            timeout=90,
            check=False,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout

    def dom(self, url: str) -> str:
        """The DOM after the page loaded, serialised."""
        return self._run("--dump-dom", url)

    def screenshot(self, url: str, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)
        self._run(f"--screenshot={path}", "--window-size=1280,1600", "--hide-scrollbars", url)
        assert path.stat().st_size > 10_000  # a rendered page, not a blank one
        return path


def get(url: str) -> tuple[int, str, str]:
    """Status, content type and body of a GET (error statuses included)."""
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read().decode()


class _Text(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag, attrs):
        self._skip += tag in ("style", "script")

    def handle_endtag(self, tag):
        self._skip -= tag in ("style", "script")

    def handle_data(self, data):
        if not self._skip:
            self.parts.append(data)


def text_of(dom: str) -> str:
    """The text a person reads in a DOM: no tags, no style sheet, entities decoded."""
    parser = _Text()
    parser.feed(dom)
    return " ".join(" ".join(parser.parts).split())


def golden_request(name: str) -> pb.CreateGoldenDatasetRequest:
    """The baseline model's own outputs as the expectations."""
    baseline = load_cost_model("v1")
    request = pb.CreateGoldenDatasetRequest(name=name, description="dashboard test reference")
    for sample_id, plan in PLANS:
        estimate = baseline.estimate(plan)
        sample = request.samples.add(
            id=sample_id,
            expected_cost_cents=estimate.cost_cents,
            expected_feasible=estimate.feasible,
        )
        sample.plan_input.update(plan)
    return request


def canary_request(**fields) -> pb.RunCanaryRequest:
    request = pb.RunCanaryRequest(min_samples=10, seed=7, **fields)
    for sample_id, plan in PLANS:
        request.samples.add(id=sample_id).plan_input.update(plan)
    return request


def seed(stub) -> tuple[pb.CanaryReport, pb.CanaryReport, pb.GoldenDataset]:
    """A golden dataset, a passing canary judged against it and a failing one."""
    dataset = stub.CreateGoldenDataset(golden_request("dash-ref"), timeout=30).dataset
    passing = stub.RunCanary(
        canary_request(candidate_model="v1", golden_dataset="dash-ref"), timeout=120
    ).report
    failing = stub.RunCanary(
        canary_request(drift_threshold=0.0001, golden_dataset="dash-ref"), timeout=120
    ).report
    assert passing.passed and passing.golden_comparison.passed
    assert not failing.passed and failing.failure_reasons
    return passing, failing, dataset


def test_dashboard_in_a_real_browser(server: ServerProcess, stub, database_url, tmp_path):
    browser = Browser(chromium(), tmp_path / "chromium-profile")
    backend = database_url.split(":", 1)[0].split("+", 1)[0]
    assert server.http_url.startswith("http://127.0.0.1:")
    passing, failing, dataset = seed(stub)
    kl_reason = next(r for r in failing.reasons if r.code != "GOLDEN_COMPARISON_FAILED")
    failing_share = f"{failing.golden_comparison.candidate.within_tolerance_share * 100:.1f} %"

    home = text_of(browser.dom(server.http_url + "/"))
    assert "Canary reports" in home and "2 most recent reports: 1 pass, 1 fail" in home
    assert passing.run_id in home and failing.run_id in home
    assert kl_reason.message in home  # what a person looks for: why it failed
    assert "100.0 % pass" in home and f"{failing_share} fail" in home  # the golden shares
    assert "no data yet" not in home
    browser.screenshot(server.http_url + "/", ARTIFACTS / f"{backend}-reports.png")

    report_url = f"{server.http_url}/reports/{failing.run_id}"
    report = text_of(browser.dom(report_url))
    assert f"Canary report {failing.run_id}" in report
    assert kl_reason.message in report and kl_reason.code in report
    assert f"dash-ref version {dataset.version}" in report and dataset.sha256 in report
    assert "Worst samples" in report and failing_share in report
    for artifact in failing.artifacts:
        assert artifact.sha256 in report and artifact.path in report
    browser.screenshot(report_url, ARTIFACTS / f"{backend}-report.png")
    # Where the drift comes from: on the report page, and alone (the screenshot of it).
    assert "Where the drift comes from" in report and "Share of |cost delta|" in report
    assert "the verdict's KL: quantile bins" in report and "most drifting samples" in report
    drift_url = f"{report_url}/drift"
    drift = text_of(browser.dom(drift_url))
    assert f"Where the drift comes from: {failing.run_id}" in drift
    assert "llm_invoke" in drift and "the report's KL divergence: equal-width bins" in drift
    browser.screenshot(drift_url, ARTIFACTS / f"{backend}-drift.png")

    golden = text_of(browser.dom(server.http_url + "/golden"))
    assert "dash-ref" in golden and dataset.sha256 in golden and "active" in golden
    assert "1 dataset, 1 version" in golden and failing.run_id in golden  # the latest judged
    browser.screenshot(server.http_url + "/golden", ARTIFACTS / f"{backend}-golden.png")

    assert "Not found" in text_of(browser.dom(server.http_url + "/reports/no-such-run"))


def test_metrics_and_probes(server: ServerProcess, stub):
    for start in (0, 50, 100):  # 120 rows in three batches
        request = pb.WriteProvenanceBatchRequest()
        for i in range(start, min(start + 50, 120)):
            json_format.ParseDict(provenance_json(i), request.records.add())
        stub.WriteProvenanceBatch(request, timeout=30)
    stub.RunCanary(canary_request(), timeout=120)
    assert len(list(stub.QueryCanaryReports(pb.QueryCanaryReportsRequest(), timeout=10))) == 1
    with pytest.raises(grpc.RpcError):
        stub.GetCanaryReport(pb.GetCanaryReportRequest(run_id="no-such-run"), timeout=10)

    service = 'grpc_service="costsim.analytics.v1.AnalyticsService"'
    expected = (
        f'grpc_server_handled_total{{grpc_code="OK",grpc_method="WriteProvenanceBatch",{service},'
        'grpc_type="unary"} 3.0',
        f'grpc_server_handled_total{{grpc_code="OK",grpc_method="QueryCanaryReports",{service},'
        'grpc_type="server_stream"} 1.0',
        f'grpc_server_handled_total{{grpc_code="NOT_FOUND",grpc_method="GetCanaryReport",'
        f'{service},grpc_type="unary"}} 1.0',
        f'grpc_server_handling_seconds_count{{grpc_code="OK",grpc_method="RunCanary",{service},'
        'grpc_type="unary"} 1.0',
        "costsim_provenance_rows_written_total 120.0",
        "costsim_serving 1.0",
    )
    # A call is counted when its handler returns, which can be just after the client has the
    # status (an aborted call most of all): give the counters a moment.
    deadline = time.monotonic() + 5
    while True:
        status, content_type, text = get(server.http_url + "/metrics")
        missing = [line for line in expected if line not in text]
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert status == 200 and content_type.startswith("text/plain; version=0.0.4")
    assert missing == []
    canary = re.findall(r'costsim_canary_runs_total\{status="(\w+)"\} 1\.0', text)
    assert len(canary) == 1 and canary[0] in ("pass", "fail")
    # The health service's own calls are measured too (ServerProcess polls it).
    assert 'grpc_method="Check",grpc_service="grpc.health.v1.Health"' in text

    assert get(server.http_url + "/healthz")[::2] == (200, "ok\n")
    assert get(server.http_url + "/readyz")[::2] == (200, "ready\n")
    post = urllib.request.Request(server.http_url + "/", method="POST", data=b"x")
    assert get_status(post) == 405


def get_status(request: urllib.request.Request) -> int:
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def test_not_ready_while_the_database_is_unreachable(tmp_path):
    # Nothing listens on port 1: the probe fails, the process stays up.
    server = ServerProcess("postgresql+psycopg://postgres@127.0.0.1:1/test", tmp_path / "s.log")
    server.start()
    try:
        assert get(server.http_url + "/healthz")[0] == 200
        assert get(server.http_url + "/readyz")[0] == 503
        status, _, page = get(server.http_url + "/")
        assert status == 503 and "Unavailable" in page
        assert "costsim_serving 0.0" in get(server.http_url + "/metrics")[2]
    finally:
        server.stop()
    assert "Traceback" not in server.log()


def test_side_port_off_and_stops_with_the_server(database_url, tmp_path):
    off = ServerProcess(database_url, tmp_path / "off.log", COSTSIM_HTTP_LISTEN="off").start()
    try:
        assert off.http_url == ""
    finally:
        assert off.stop() == 0
    on = ServerProcess(database_url, tmp_path / "on.log").start()
    url = on.http_url
    assert get(url + "/healthz")[0] == 200
    assert on.stop() == 0
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(url + "/healthz", timeout=5)
