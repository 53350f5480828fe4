"""Dashboard rendering: escaping of user data, empty data, charts; the routes over fakes."""

from __future__ import annotations

import asyncio
import json
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser

import pytest

from costsim_analytics.api.dashboard.app import Dashboard
from costsim_analytics.api.dashboard.bars import Bar, histogram_chart, share_chart
from costsim_analytics.api.dashboard.charts import Point, Series, line_chart, nice_ceiling
from costsim_analytics.api.dashboard.httpserver import Response, parse_head, render
from costsim_analytics.api.dashboard.markup import Markup, html, join, num, pct
from costsim_analytics.api.dashboard.pages import error_page, golden_page, reports_page
from costsim_analytics.api.dashboard.report_page import report_page
from costsim_analytics.api.metrics import ServiceMetrics
from costsim_analytics.engines.canary.command import RunCanary, RunCanaryResult
from costsim_analytics.engines.canary.evaluation import (
    CanaryConfig,
    Sample,
    evaluate,
    report_artifact,
    sample_artifacts,
)
from costsim_analytics.engines.canary.explain import (
    ExplainRun,
    Explanation,
    RunNotExplainable,
    explain,
    validate,
)
from costsim_analytics.engines.cost_models import load_cost_model
from costsim_analytics.engines.errors import (
    AlreadyExists,
    DatabaseUnavailable,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    RequestIdReused,
    SchemaOutOfDate,
    Unavailable,
)
from costsim_analytics.engines.findings import FailureReason
from costsim_analytics.engines.golden.datasets import GoldenDataset
from costsim_analytics.engines.golden.results import (
    FeasibilityConfusion,
    GoldenComparison,
    GoldenSampleResult,
    GoldenSummary,
)
from costsim_analytics.engines.provenance import WriteBatch, WriteBatchResult
from costsim_analytics.engines.reports import (
    CANARY_STATUSES,
    ArtifactRef,
    CanaryReport,
    GetReport,
    ReportQuery,
)
from costsim_analytics.handlers.call import Call
from costsim_analytics.handlers.registry import (
    OP_CANARY_EXPLAIN,
    OP_CANARY_REPORT,
    OP_CANARY_REPORTS,
    OP_CANARY_RUN,
    OP_GOLDEN_LIST,
    OP_PROVENANCE_BATCH,
    OperationRegistry,
)
from costsim_analytics.handlers.streams import ResultStream
from tests.factories import canary_report

EVIL = '<script>alert("x")</script>&'
T0 = datetime(2026, 11, 26, tzinfo=UTC)


class Elements(HTMLParser):
    """Collects start tags: proves that no user text turned into markup."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)


def summary(model: str, share: float) -> GoldenSummary:
    return GoldenSummary(
        model, 10, 0, int(share * 10), share, 0.05, 0.1, 1.0, 4.0, FeasibilityConfusion(6, 1, 0, 3)
    )


def comparison(name: str = "nightly-ref", share: float = 0.7, passed: bool = False):
    reason = FailureReason(
        "GOLDEN_COMPARISON_FAILED",
        "golden_within_tolerance_share",
        share,
        0.95,
        "<",
        f"golden {name} v3: {share:.0%} of samples within 10% < 95%",
    )
    worst = GoldenSampleResult(EVIL, 100.0, True, 150.0, False, 50.0, 0.5, False, 101.0, True, 0.01)
    return GoldenComparison(
        dataset_name=name,
        dataset_version=3,
        dataset_sha256="ab" * 32,
        candidate_model="v2",
        baseline_model="v1",
        tolerance=0.1,
        min_share=0.95,
        max_feasibility_flips=0,
        passed=passed,
        reasons=() if passed else (reason,),
        candidate=summary("v2", share),
        baseline=summary("v1", 1.0),
        mean_relative_error_delta=0.04,
        closer_samples=1,
        farther_samples=6,
        tied_samples=3,
        direction="away",
        worst_samples=(worst,),
    )


def failing_report(i: int = 1, **overrides):
    reason = FailureReason("KL_DIVERGENCE", "kl_divergence", 0.31, 0.2, ">", f"KL 0.31 {EVIL}")
    fields = {
        "run_id": f"run-{EVIL}",
        "status": "fail",
        "passed": False,
        "reasons": (reason,),
        "failure_reasons": (reason.message,),
        "artifacts": (ArtifactRef("/a/report.json", "cd" * 32, 10),),
    }
    return canary_report(i, **{**fields, **overrides})


# --- markup ----------------------------------------------------------------------------------


def test_html_escapes_every_argument_unless_it_is_markup():
    assert html("<td>{}</td>", EVIL) == (
        "<td>&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;</td>"
    )
    assert html('<a title="{}">', '" onmouseover="x') == '<a title="&quot; onmouseover=&quot;x">'
    assert html("<p>{}</p>", Markup("<b>ok</b>")) == "<p><b>ok</b></p>"
    assert join([Markup("<b>"), Markup("<i>")]) == "<b><i>"
    assert join(["<i>", "<b>"]) == "&lt;i&gt;&lt;b&gt;"  # type: ignore[list-item]  # str escapes


def test_numbers_for_people():
    assert (num(None), num(True), num(12345), num(0.123456), num(12345.678)) == (
        "-",
        "yes",
        "12,345",
        "0.1235",
        "12,345.7",
    )
    assert (pct(None), pct(0.6833)) == ("-", "68.3 %")


# --- charts ----------------------------------------------------------------------------------


def test_bar_charts_are_well_formed_svg_with_escaped_labels():
    bars = [Bar(EVIL, 0.75, 0.6, 0.9), Bar("kv_get", 0.0, 0.0, 0.0)]
    root = ET.fromstring(share_chart("Share", bars))
    ns = "{http://www.w3.org/2000/svg}"
    assert len(root.findall(f".//{ns}line[@class='ci']")) == 2
    assert "nothing moved" in share_chart("Share", [])
    svg = histogram_chart(EVIL, [0.0, 1.0, 2.0], [("v1", [3, 1]), ("v2", [0, 4])])
    root = ET.fromstring(svg)
    titles = [t.text for t in root.iter(f"{ns}title")]
    assert "v2: 4 samples (100.0 %) in [1, 2] cents" in titles


def test_chart_is_well_formed_svg_with_gaps_for_missing_values():
    points = [
        Point(T0 + timedelta(hours=i), v, f"run-{i}")
        for i, v in enumerate([0.1, 0.2, None, 0.4, 0.3])
    ]
    svg = line_chart("KL", [Series("KL divergence", points)])
    root = ET.fromstring(svg)  # XML-well-formed, so every value was escaped
    ns = "{http://www.w3.org/2000/svg}"
    assert len(root.findall(f"{ns}polyline")) == 2  # the missing value splits the line
    assert len(root.findall(f".//{ns}circle")) == 5 - 1 + 1  # 4 points + the legend marker
    assert "no data yet" not in svg


def test_chart_without_data_says_so_and_escapes_labels():
    svg = line_chart(EVIL, [Series(EVIL, [Point(T0, None, EVIL)])])
    ET.fromstring(svg)
    assert "no data yet" in svg and "<script>" not in svg
    empty = line_chart("nothing", [Series("KL", [])])
    ET.fromstring(empty)
    assert "no data yet" in empty and "KL (no data)" in empty


def test_single_point_chart_and_axis_top():
    svg = line_chart("one", [Series("x", [Point(T0, 0.3, "r")])])
    ET.fromstring(svg)
    assert "<polyline" not in svg and ">0.5<" in svg
    assert [nice_ceiling(v) for v in (0, 0.3, 1.0, 1.2, 7)] == [1.0, 0.5, 1.0, 2.0, 10.0]


# --- pages -----------------------------------------------------------------------------------


def test_reports_page_escapes_run_ids_and_reasons():
    text = reports_page([failing_report(golden_comparison=comparison()), canary_report(0)])
    assert "<script>" not in text and "script" not in Elements(text).tags
    assert "KL 0.31 &lt;script&gt;" in text
    # The run id is one percent-encoded path segment in the link, escaped in the text.
    assert 'href="/reports/run-%3Cscript%3Ealert%28%22x%22%29%3C%2Fscript%3E%26"' in text
    assert "70.0 %" in text and "nightly-ref v3" in text  # the golden share column
    assert text.count("<svg") == 2


def test_reports_page_without_reports():
    text = reports_page([])
    assert "No canary reports yet" in text and text.count("no data yet") == 2
    assert "golden within tolerance (no data)" in text


def test_report_page_shows_everything_escaped():
    report = failing_report(golden_comparison=comparison())
    text = report_page(report)
    assert "script" not in Elements(text).tags
    for expected in (
        "KL_DIVERGENCE",
        "nightly-ref version 3",
        "ab" * 32,
        "cd" * 32,
        "/a/report.json",
        "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;",  # the worst sample's id
        "70.0 %",
        "away: 1 samples closer, 6 farther",
    ):
        assert expected in text, expected


def test_report_page_without_golden_or_statistics():
    text = report_page(canary_report(0))
    assert "No golden comparison" in text and "No statistics recorded" in text
    assert "None: the canary passed." in text


def test_golden_page():
    d = GoldenDataset(EVIL, 2, "ef" * 32, "desc", "import", 60, True, T0)
    text = golden_page(
        [d, replace(d, version=1, active=False)],
        [failing_report(golden_comparison=comparison(name=EVIL, share=0.7))],
    )
    assert "script" not in Elements(text).tags
    assert "1 dataset, 2 versions" in text and "ef" * 32 in text and "active" in text
    assert "No golden datasets yet" in golden_page([])


def test_error_page_escapes_the_message():
    assert "<script>" not in error_page(404, "Not found", EVIL)


# --- HTTP plumbing ---------------------------------------------------------------------------


def test_parse_head_and_render():
    request = parse_head(b"GET /reports/a%2Fb?status=fail&limit=5 HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (request.method, request.path, request.arg("status"), request.arg("limit")) == (
        "GET",
        "/reports/a/b",
        "fail",
        "5",
    )
    with pytest.raises(ValueError, match="bad request line"):
        parse_head(b"nonsense\r\n\r\n")
    wire = render(Response(200, b"hello", "text/plain"))
    assert wire.startswith(b"HTTP/1.1 200 OK\r\n") and wire.endswith(b"\r\n\r\nhello")
    assert (
        b"Content-Length: 5\r\n" in wire and b"Content-Security-Policy: default-src 'none'" in wire
    )
    assert not render(Response(200, b"hello"), head_only=True).endswith(b"hello")


class Stream:
    def __init__(self, reports):
        self.reports = reports

    def __iter__(self):
        return iter((r, "token") for r in self.reports)


def fake_registry(reports) -> OperationRegistry:
    registry = OperationRegistry()
    registry.register(OP_CANARY_REPORTS, lambda query, call: Stream(reports[: query.page_size]))

    def get(command: GetReport, call: Call) -> CanaryReport:
        for r in reports:
            if r.run_id == command.run_id:
                return r
        raise NotFound(f"no canary report with run_id {command.run_id!r}")

    registry.register(OP_CANARY_REPORT, get)
    registry.register(OP_GOLDEN_LIST, lambda command, call: [])

    def explained(command: ExplainRun, call: Call) -> Explanation:
        validate(command)
        if command.run_id != failing_report().run_id:
            raise RunNotExplainable("it predates per-step estimates")
        return explanation(command)

    registry.register(OP_CANARY_EXPLAIN, explained)
    return registry


def explanation(command: ExplainRun) -> Explanation:
    """A real explanation of a small run whose skills and sample ids are hostile text."""
    samples = [
        Sample(f"{EVIL}-{i}", {"plan": [{"skill": EVIL}, {"skill": "llm_invoke", "params": {
            "prompt": "p" * (900 * i)}}], "budget_cents": 12})
        for i in range(12)
    ]  # fmt: skip
    ev = evaluate(
        samples,
        load_cost_model("v1"),
        load_cost_model("v2"),
        CanaryConfig(min_samples=1, permutations=50, bootstrap_resamples=50),
        run_id=failing_report().run_id,
        timestamp=T0,
        seed=1,
        sample_source="explicit",
    )
    report_json = report_artifact(ev, ev.report, {})
    comparisons = sample_artifacts(ev)["comparisons.jsonl"]
    return explain(command, ev.report, json.loads(report_json), comparisons)


def call(app: Dashboard, target: str) -> Response:
    request = parse_head(f"GET {target} HTTP/1.1\r\n\r\n".encode())
    return asyncio.run(app(request))


def test_routes_and_error_statuses():
    reports = [failing_report(), canary_report(0)]
    ready = [False]
    metrics = ServiceMetrics()
    with ThreadPoolExecutor(2) as pool:
        app = Dashboard(fake_registry(reports), pool, metrics, lambda: ready[0])
        assert call(app, "/healthz").status == 200
        assert call(app, "/readyz").status == 503
        ready[0] = True
        assert call(app, "/readyz").status == 200
        page = call(app, "/?limit=1")
        assert page.status == 200 and page.body.count(b'class="badge fail"') == 1
        assert call(app, "/?limit=0").status == 400
        # Unicode digits ("²" passes str.isdigit(), int() refuses it) and huge numbers: 400.
        for raw in ("%C2%B2", "%D9%A1", "9" * 5000, "1%00"):
            assert call(app, f"/?limit={raw}").status == 400, raw
        evil_path = "/reports/run-%3Cscript%3Ealert%28%22x%22%29%3C%2Fscript%3E%26"
        found = call(app, evil_path)
        assert found.status == 200 and b"KL_DIVERGENCE" in found.body
        # Where the drift comes from: the section, its charts, hostile names escaped.
        assert (
            b"Where the drift comes from" in found.body and b"Share of |cost delta|" in found.body
        )
        assert b"&lt;script&gt;" in found.body
        assert "script" not in Elements(found.body.decode()).tags
        drift = call(app, evil_path + "/drift?group_by=prompt_band&top=3")
        assert drift.status == 200 and b"The 3 most drifting samples" in drift.body
        assert "script" not in Elements(drift.body.decode()).tags
        for query, field in (("group_by=colour", b"group_by"), ("top=0", b"top"),
                             ("top=%C2%B2", b"top"), ("top=101", b"top")):  # fmt: skip
            bad = call(app, f"{evil_path}/drift?{query}")
            assert bad.status == 400 and field in bad.body, query
        assert call(app, f"{evil_path}?top=9999999").status == 400
        # A run that cannot be explained: its page still answers, with the sentence.
        old = call(app, f"/reports/{canary_report(0).run_id}")
        assert old.status == 200 and b"predates per-step estimates" in old.body
        missing = call(app, "/reports/nope")
        assert missing.status == 404 and b"no canary report" in missing.body
        assert call(app, "/golden").status == 200
        assert call(app, "/nothing").status == 404
        exposition = call(app, "/metrics")
        assert exposition.content_type.startswith("text/plain")
        assert b'costsim_http_requests_total{code="404",route="/reports/{run_id}"} 1.0' in (
            exposition.body
        )


def test_a_failing_store_is_503_and_a_bug_is_500():
    def down(query: ReportQuery, call: Call) -> ResultStream[CanaryReport]:
        raise Unavailable("database unavailable")

    def bug(command: GetReport, call: Call) -> CanaryReport:
        raise ZeroDivisionError("a bug")

    registry = OperationRegistry()
    registry.register(OP_CANARY_REPORTS, down)
    registry.register(OP_CANARY_REPORT, bug)
    with ThreadPoolExecutor(1) as pool:
        app = Dashboard(registry, pool, ServiceMetrics(), lambda: True)
        assert call(app, "/").status == 503
        broken = call(app, "/reports/x")
        assert broken.status == 500 and b"error id" in broken.body
        assert b"a bug" not in broken.body


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (InvalidArgument.field("run_id", "bad"), 400),
        (NotFound("gone"), 404),
        (AlreadyExists("taken"), 409),
        (RequestIdReused("reused"), 409),
        (FailedPrecondition("not now"), 412),
        (SchemaOutOfDate("stale"), 412),
        (Unavailable("down"), 503),
        (DatabaseUnavailable("down"), 503),
    ],
)
def test_domain_errors_map_to_http_as_to_grpc(error, status):
    """The dashboard maps through the same table as the servicer (409/412 included)."""

    def fail(command: GetReport, call: Call) -> CanaryReport:
        raise error

    registry = OperationRegistry()
    registry.register(OP_CANARY_REPORT, fail)
    with ThreadPoolExecutor(1) as pool:
        page = call(Dashboard(registry, pool, ServiceMetrics(), lambda: True), "/reports/x")
    assert page.status == status
    assert error.message.encode() in page.body


# --- domain counters -------------------------------------------------------------------------


def test_metrics_middleware_counts_rows_and_canary_outcomes_but_not_replays():
    metrics = ServiceMetrics()
    registry = OperationRegistry()
    registry.register(
        OP_PROVENANCE_BATCH,
        lambda cmd, call: WriteBatchResult((1, 2, 3), replayed=cmd.request_id == "again"),
    )
    registry.register(
        OP_CANARY_RUN,
        lambda cmd, call: RunCanaryResult(canary_report(1), replayed=cmd.request_id == "again"),
    )
    registry.register(OP_CANARY_REPORT, lambda cmd, call: canary_report(2))
    registry.wrap(metrics.middleware())
    registry.get(OP_PROVENANCE_BATCH)(WriteBatch([], request_id="first"), Call())
    registry.get(OP_PROVENANCE_BATCH)(WriteBatch([], request_id="again"), Call())
    registry.get(OP_CANARY_RUN)(RunCanary(request_id="first"), Call())
    registry.get(OP_CANARY_RUN)(RunCanary(request_id="again"), Call())
    assert registry.get(OP_CANARY_REPORT)(GetReport("x"), Call()).run_id == canary_report(2).run_id
    text = metrics.exposition().decode()
    assert "costsim_provenance_rows_written_total 3.0" in text
    status = canary_report(1).status
    assert f'costsim_canary_runs_total{{status="{status}"}} 1.0' in text
    others = [s for s in CANARY_STATUSES if s != status]
    assert all(f'costsim_canary_runs_total{{status="{s}"}} 0.0' in text for s in others)


def test_an_inconclusive_report_shows_its_badge_and_each_rules_decision():
    from costsim_analytics.engines.canary.evaluation import CanaryConfig, Sample, evaluate
    from costsim_analytics.engines.canary.synthetic import synthetic_samples
    from costsim_analytics.engines.cost_models import load_cost_model

    v1 = load_cost_model("v1")
    report = evaluate(
        [Sample(i, p) for i, p in synthetic_samples()[:40]],
        v1,
        v1,
        CanaryConfig(),
        run_id="canary-inconclusive",
        timestamp=T0,
        seed=0,
        sample_source="explicit",
    ).report
    text = report_page(report)
    assert '<span class="badge inconclusive">inconclusive</span>' in text
    assert "OUTLIERS_INCONCLUSIVE" in text and "a pass needs at least 59 samples" in text
    # Tied costs merge quantile edges: fewer than 10 bins, and the page says how many.
    assert report.statistics is not None and report.statistics.judgement is not None
    bins = report.statistics.judgement.kl_bins
    assert f"quantile, {bins} bins, laplace smoothing" in text
    assert "0.01 (holm)" in text and "1,000 sign flips" in text
    listing = reports_page([report])
    assert "1 inconclusive" in listing and "badge inconclusive" in listing


def test_pages_over_the_admission_bound_are_429_with_retry_after_and_probes_are_not():
    from costsim_analytics.api.admission import Admission, AdmissionLimits, Bound

    admission = Admission(AdmissionLimits(unary=Bound(1, 1), retry_after_s=2.5), lambda *_: None)
    with ThreadPoolExecutor(2) as pool:
        app = Dashboard(
            fake_registry([canary_report(0)]), pool, ServiceMetrics(), lambda: True, None, admission
        )
        assert call(app, "/").status == 200  # the slot comes back after each page
        held = admission.enter("unary", "dashboard")  # another page is being rendered
        refused = call(app, "/")
        assert refused.status == 429
        assert ("Retry-After", "3") in refused.headers
        assert call(app, "/readyz").status == 200  # probes never wait for admission
        held.release()
        assert call(app, "/golden").status == 200
