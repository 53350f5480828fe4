"""Proto <-> domain conversion. The servicer and the client are the only callers.

Domain types know nothing of protobuf; every translation lives here.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from google.protobuf import struct_pb2, timestamp_pb2

from costsim.analytics.v1 import analytics_pb2 as pb
from costsim_analytics.engines.canary import Sample
from costsim_analytics.engines.canary_command import RunCanary
from costsim_analytics.engines.drift import DriftStats, DriftStatsQuery
from costsim_analytics.engines.provenance import (
    ProvenanceFilter,
    ProvenanceInput,
    ProvenanceQuery,
    ProvenanceRecord,
    WriteBatch,
    WriteBatchResult,
)
from costsim_analytics.engines.reports import (
    CanaryReport,
    Interval,
    ReportFilter,
    ReportQuery,
    ReportStatistics,
)

STATUS_TO_PROTO = {
    "pass": pb.CANARY_STATUS_PASS,
    "fail": pb.CANARY_STATUS_FAIL,
    "error": pb.CANARY_STATUS_ERROR,
    "skipped": pb.CANARY_STATUS_SKIPPED,
}
STATUS_FROM_PROTO = {value: key for key, value in STATUS_TO_PROTO.items()}


# --- JSON values -------------------------------------------------------------------------------


def _value(v: struct_pb2.Value) -> Any:
    kind = v.WhichOneof("kind")
    if kind == "number_value":
        return v.number_value
    if kind == "string_value":
        return v.string_value
    if kind == "bool_value":
        return v.bool_value
    if kind == "struct_value":
        return struct_to_dict(v.struct_value)
    if kind == "list_value":
        return [_value(item) for item in v.list_value.values]
    return None


def struct_to_dict(s: struct_pb2.Struct) -> dict[str, Any]:
    """A Struct as plain Python (numbers stay floats; the engine normalises them)."""
    return {key: _value(value) for key, value in s.fields.items()}


def dict_to_struct(d: dict[str, Any], out: struct_pb2.Struct) -> None:
    """Fill ``out`` from a JSON-like dict."""
    out.update(d)


def timestamp(ts: timestamp_pb2.Timestamp) -> datetime:
    """A Timestamp as an aware UTC datetime (microsecond precision)."""
    return ts.ToDatetime(tzinfo=UTC)


def optional_timestamp(msg: Any, field: str) -> datetime | None:
    """The timestamp field ``field`` of ``msg``, or None when unset."""
    return timestamp(getattr(msg, field)) if msg.HasField(field) else None


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def to_timestamp(dt: datetime) -> timestamp_pb2.Timestamp:
    """An aware datetime as a Timestamp (plain arithmetic: ``FromDatetime`` is slower)."""
    delta = dt - _EPOCH
    return timestamp_pb2.Timestamp(
        seconds=delta.days * 86_400 + delta.seconds, nanos=delta.microseconds * 1000
    )


# --- provenance ---------------------------------------------------------------------------------


def provenance_input(rec: pb.ProvenanceRecord) -> ProvenanceInput:
    """A request record as the engine's input (unvalidated)."""
    return ProvenanceInput(
        run_id=rec.run_id,
        tenant_id=rec.tenant_id,
        variant_slug=rec.variant_slug,
        source=rec.source,
        model_version=rec.model_version,
        adapter_version=rec.adapter_version,
        commit_sha=rec.commit_sha,
        input_hash=rec.input_hash,
        output_hash=rec.output_hash,
        v1_cost=rec.v1_cost if rec.HasField("v1_cost") else None,
        v2_cost=rec.v2_cost if rec.HasField("v2_cost") else None,
        payload=struct_to_dict(rec.payload) if rec.HasField("payload") else None,
        payload_json=rec.payload_json,
        runtime_ms=rec.runtime_ms,
        id_set=rec.id != 0,
        cost_delta_set=rec.HasField("cost_delta"),
        created_at_set=rec.HasField("created_at"),
    )


def write_batch(request: pb.WriteProvenanceBatchRequest) -> WriteBatch:
    """WriteProvenanceBatchRequest -> command."""
    return WriteBatch(
        records=[provenance_input(rec) for rec in request.records],
        request_id=request.request_id,
    )


def write_batch_response(result: WriteBatchResult) -> pb.WriteProvenanceBatchResponse:
    """Command result -> WriteProvenanceBatchResponse."""
    return pb.WriteProvenanceBatchResponse(ids=result.ids, replayed=result.replayed)


def provenance_record(r: ProvenanceRecord) -> pb.ProvenanceRecord:
    """A stored record as a message."""
    msg = pb.ProvenanceRecord(
        id=r.id,
        run_id=r.run_id,
        tenant_id=r.tenant_id,
        variant_slug=r.variant_slug,
        source=r.source,
        model_version=r.model_version,
        adapter_version=r.adapter_version,
        commit_sha=r.commit_sha,
        input_hash=r.input_hash,
        output_hash=r.output_hash,
        v1_cost=r.v1_cost,
        v2_cost=r.v2_cost,
        cost_delta=r.cost_delta,
        runtime_ms=r.runtime_ms,
        created_at=to_timestamp(r.created_at),
    )
    msg.payload.update(r.payload)
    return msg


def provenance_query(request: pb.QueryProvenanceRequest) -> ProvenanceQuery:
    """QueryProvenanceRequest -> query."""
    return ProvenanceQuery(
        filter=ProvenanceFilter(
            tenant_id=request.tenant_id,
            variant_slug=request.variant_slug,
            source=request.source,
            input_hash=request.input_hash,
            run_id=request.run_id,
            start_time=optional_timestamp(request, "start_time"),
            end_time=optional_timestamp(request, "end_time"),
        ),
        page_size=request.page_size,
        page_token=request.page_token,
    )


def drift_query(request: pb.GetDriftStatsRequest) -> DriftStatsQuery:
    """GetDriftStatsRequest -> query."""
    return DriftStatsQuery(
        tenant_id=request.tenant_id,
        variant_slug=request.variant_slug,
        start_time=optional_timestamp(request, "start_time"),
        end_time=optional_timestamp(request, "end_time"),
    )


def drift_stats(stats: DriftStats) -> pb.GetDriftStatsResponse:
    """Statistics -> GetDriftStatsResponse."""
    return pb.GetDriftStatsResponse(
        total=stats.total,
        avg_delta=stats.avg_delta,
        min_delta=stats.min_delta,
        max_delta=stats.max_delta,
        stddev_delta=stats.stddev_delta,
        p50_delta=stats.p50_delta,
        p90_delta=stats.p90_delta,
    )


# --- canary reports -----------------------------------------------------------------------------


def _interval(i: Interval | None) -> pb.ConfidenceInterval | None:
    if i is None:
        return None
    return pb.ConfidenceInterval(
        estimate=i.estimate, low=i.low, high=i.high, level=i.level, resamples=i.resamples
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
        median_cost_diff_ci=_interval(s.median_cost_diff_ci),
        p90_cost_diff_ci=_interval(s.p90_cost_diff_ci),
        median_relative_delta_ci=_interval(s.median_relative_delta_ci),
        kl_bins=s.kl_bins,
        kl_epsilon=s.kl_epsilon,
        outlier_share=s.outlier_share,
        major_drift_share=s.major_drift_share,
    )


def canary_report(r: CanaryReport) -> pb.CanaryReport:
    """A stored report as a message."""
    return pb.CanaryReport(
        id=r.id,
        run_id=r.run_id,
        timestamp=to_timestamp(r.timestamp),
        status=STATUS_TO_PROTO.get(r.status, pb.CANARY_STATUS_UNSPECIFIED),
        total_samples=r.total_samples,
        matching_samples=r.matching_samples,
        minor_drift_samples=r.minor_drift_samples,
        major_drift_samples=r.major_drift_samples,
        median_cost_diff=r.median_cost_diff,
        p90_cost_diff=r.p90_cost_diff,
        kl_divergence=r.kl_divergence,
        outlier_count=r.outlier_count,
        passed=r.passed,
        failure_reasons=r.failure_reasons,
        artifact_paths=r.artifact_paths,
        created_at=to_timestamp(r.created_at) if r.created_at else None,
        reasons=[
            pb.FailureReason(
                code=x.code,
                metric=x.metric,
                observed=x.observed,
                threshold=x.threshold,
                comparator=x.comparator,
                interval=_interval(x.interval),
                message=x.message,
            )
            for x in r.reasons
        ],
        statistics=_statistics(r.statistics),
        artifacts=[
            pb.Artifact(path=a.path, sha256=a.sha256, size_bytes=a.size_bytes) for a in r.artifacts
        ],
        baseline_model=r.baseline_model,
        candidate_model=r.candidate_model,
        invalid_samples=r.invalid_samples,
        sample_source=r.sample_source,
        seed=r.seed,
    )


def _optional(msg: Any, name: str) -> Any:
    return getattr(msg, name) if msg.HasField(name) else None


def run_canary(request: pb.RunCanaryRequest) -> RunCanary:
    """RunCanaryRequest -> command."""
    return RunCanary(
        sample_count=request.sample_count,
        lookback_days=request.lookback_days,
        drift_threshold=_optional(request, "drift_threshold"),
        outlier_threshold=_optional(request, "outlier_threshold"),
        outlier_max_pct=_optional(request, "outlier_max_pct"),
        major_drift_max_pct=_optional(request, "major_drift_max_pct"),
        min_samples=_optional(request, "min_samples"),
        median_delta_tolerance=_optional(request, "median_delta_tolerance"),
        baseline_model=request.baseline_model,
        candidate_model=request.candidate_model,
        samples=tuple(
            Sample(s.id, struct_to_dict(s.plan_input) if s.HasField("plan_input") else None)
            for s in request.samples
        ),
        seed=request.seed,
        request_id=request.request_id,
    )


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
            start_time=optional_timestamp(request, "start_time"),
            end_time=optional_timestamp(request, "end_time"),
        ),
        page_size=request.page_size,
        page_token=request.page_token,
    )
