"""Proto <-> domain conversion of the canary: RunCanary, canary reports and their queries.

One place for both, golden fields included, so no caller can pick a conversion that leaves
some of them out.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format

from costsim.analytics.v1 import analytics_pb2 as pb
from costsim_analytics.api import convert, convert_golden
from costsim_analytics.engines.canary.command import RunCanary, RunCanaryResult
from costsim_analytics.engines.canary.evaluation import Sample
from costsim_analytics.engines.canary.verdict import SEED_SPACE
from costsim_analytics.engines.reports import (
    CanaryReport,
    GetReport,
    Judgement,
    ReportFilter,
    ReportQuery,
    ReportStatistics,
)

STATUS_TO_PROTO = {
    "pass": pb.CANARY_STATUS_PASS,
    "fail": pb.CANARY_STATUS_FAIL,
    "error": pb.CANARY_STATUS_ERROR,
    "skipped": pb.CANARY_STATUS_SKIPPED,
    "inconclusive": pb.CANARY_STATUS_INCONCLUSIVE,
}
STATUS_FROM_PROTO = {value: key for key, value in STATUS_TO_PROTO.items()}


def get_report(request: pb.GetCanaryReportRequest) -> GetReport:
    """GetCanaryReportRequest -> command."""
    return GetReport(request.run_id)


def report_query(request: pb.QueryCanaryReportsRequest) -> ReportQuery:
    """QueryCanaryReportsRequest -> query. An unknown enum number becomes an invalid status."""
    if request.status == pb.CANARY_STATUS_UNSPECIFIED:
        status = ""
    else:
        status = STATUS_FROM_PROTO.get(request.status, f"<unknown {request.status}>")
    return ReportQuery(
        filter=ReportFilter(
            status=status,
            passed=request.passed if request.HasField("passed") else None,
            start_time=convert.optional_timestamp(request, "start_time"),
            end_time=convert.optional_timestamp(request, "end_time"),
        ),
        page_size=request.page_size,
        page_token=request.page_token,
    )


def _judgement(j: Judgement | None) -> pb.CanaryJudgement | None:
    if j is None:
        return None
    return pb.CanaryJudgement(
        judge=j.judge,
        kl_bin_method=j.kl_bin_method,
        kl_bins=j.kl_bins,
        kl_smoothing=j.kl_smoothing,
        kl=j.kl,
        js=j.js,
        permutations=j.permutations,
        # Reports stored before the derived seeds wrapped may name the run's seed + 3 past
        # 64 bits; the same value wrapped is the seed such a run now uses.
        permutation_seed=j.permutation_seed % SEED_SPACE,
        kl_p_value=j.kl_p_value,
        alpha=j.alpha,
        correction=j.correction,
        rules=[
            pb.RuleDecision(
                rule=r.rule,
                metric=r.metric,
                observed=r.observed,
                threshold=r.threshold,
                decision=r.decision,
                p_value=r.p_value,
                level=r.level,
                upper_bound=r.upper_bound,
            )
            for r in j.rules
        ],
    )


def _statistics(s: ReportStatistics | None) -> pb.CanaryStatistics | None:
    if s is None:
        return None
    t = s.paired_test
    return pb.CanaryStatistics(
        js_divergence=s.js_divergence,
        paired_test=pb.PairedTest(
            method=t.method,
            n=t.n,
            n_nonzero=t.n_nonzero,
            statistic=t.statistic,
            p_value=t.p_value,
            effect_size=t.effect_size,
            median_difference=t.median_difference,
        ),
        median_cost_diff_ci=convert.interval(s.median_cost_diff_ci),
        p90_cost_diff_ci=convert.interval(s.p90_cost_diff_ci),
        median_relative_delta_ci=convert.interval(s.median_relative_delta_ci),
        kl_bins=s.kl_bins,
        kl_epsilon=s.kl_epsilon,
        outlier_share=s.outlier_share,
        major_drift_share=s.major_drift_share,
        judgement=_judgement(s.judgement),
    )


def canary_report(r: CanaryReport) -> pb.CanaryReport:
    """A stored report as a message, its golden comparison included."""
    return pb.CanaryReport(**canary_report_fields(r))


def report_response(r: CanaryReport, page_token: str) -> pb.QueryCanaryReportsResponse:
    """One message of a QueryCanaryReports stream.

    The report is built in place from its fields: a ``CanaryReport`` message handed to the
    response's constructor would be copied into it, once per streamed report.
    """
    fields = canary_report_fields(r)  # a message field takes a mapping (the stubs say otherwise)
    return pb.QueryCanaryReportsResponse(report=fields, page_token=page_token)  # type: ignore[arg-type]


def canary_report_fields(r: CanaryReport) -> dict[str, Any]:
    """The fields of :func:`canary_report`'s message, as its constructor's keywords."""
    return {
        "id": r.id,
        "run_id": r.run_id,
        "timestamp": convert.to_timestamp(r.timestamp),
        "status": STATUS_TO_PROTO.get(r.status, pb.CANARY_STATUS_UNSPECIFIED),
        "total_samples": r.total_samples,
        "matching_samples": r.matching_samples,
        "minor_drift_samples": r.minor_drift_samples,
        "major_drift_samples": r.major_drift_samples,
        "median_cost_diff": r.median_cost_diff,
        "p90_cost_diff": r.p90_cost_diff,
        "kl_divergence": r.kl_divergence,
        "outlier_count": r.outlier_count,
        "passed": r.passed,
        "failure_reasons": r.failure_reasons,
        "artifact_paths": r.artifact_paths,
        "created_at": convert.to_timestamp(r.created_at) if r.created_at else None,
        "reasons": [convert.failure_reason(x) for x in r.reasons],
        "statistics": _statistics(r.statistics),
        "artifacts": [
            pb.Artifact(path=a.path, sha256=a.sha256, size_bytes=a.size_bytes) for a in r.artifacts
        ],
        "baseline_model": r.baseline_model,
        "candidate_model": r.candidate_model,
        "invalid_samples": r.invalid_samples,
        "sample_source": r.sample_source,
        "seed": r.seed,
        "golden_comparison": (
            None if r.golden_comparison is None else convert_golden.comparison(r.golden_comparison)
        ),
    }


def run_canary(request: pb.RunCanaryRequest) -> RunCanary:
    """RunCanaryRequest -> command."""
    return RunCanary(
        sample_count=request.sample_count,
        lookback_days=request.lookback_days,
        drift_threshold=convert.optional(request, "drift_threshold"),
        outlier_threshold=convert.optional(request, "outlier_threshold"),
        outlier_max_pct=convert.optional(request, "outlier_max_pct"),
        major_drift_max_pct=convert.optional(request, "major_drift_max_pct"),
        min_samples=convert.optional(request, "min_samples"),
        median_delta_tolerance=convert.optional(request, "median_delta_tolerance"),
        baseline_model=request.baseline_model,
        candidate_model=request.candidate_model,
        samples=tuple(
            Sample(s.id, convert.struct_to_dict(s.plan_input) if s.HasField("plan_input") else None)
            for s in request.samples
        ),
        seed=request.seed,
        request_id=request.request_id,
        golden_dataset=request.golden_dataset,
        judge=request.judge,
    )


def run_canary_response(result: RunCanaryResult) -> pb.RunCanaryResponse:
    """Command result -> RunCanaryResponse."""
    return pb.RunCanaryResponse(report=canary_report(result.report), replayed=result.replayed)


def run_canary_from_json(request: dict[str, Any]) -> RunCanary:
    """A RunCanaryRequest in its JSON form -> command (for in-process callers such as the CLI)."""
    return run_canary(json_format.ParseDict(request, pb.RunCanaryRequest()))
