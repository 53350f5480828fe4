"""Proto <-> domain conversion of ExplainCanaryRun: the request, and the answer as messages."""

from __future__ import annotations

from costsim.analytics.v1 import analytics_pb2 as pb
from costsim_analytics.engines.canary.explain import (
    DriftingSample,
    ExplainRun,
    Explanation,
    Histogram,
    StepBreakdown,
)
from costsim_analytics.engines.canary.groups import Attribution

GROUP_BY_FROM_PROTO = {
    pb.EXPLAIN_GROUP_BY_UNSPECIFIED: "",
    pb.EXPLAIN_GROUP_BY_SKILL: "skill",
    pb.EXPLAIN_GROUP_BY_POSITION: "position",
    pb.EXPLAIN_GROUP_BY_ITERATIONS: "iterations",
    pb.EXPLAIN_GROUP_BY_PROMPT_BAND: "prompt_band",
}
GROUP_BY_TO_PROTO = {name: value for value, name in GROUP_BY_FROM_PROTO.items() if name}


def explain_run(request: pb.ExplainCanaryRunRequest) -> ExplainRun:
    """ExplainCanaryRunRequest -> command. An unknown enum number becomes an invalid name."""
    group_by = GROUP_BY_FROM_PROTO.get(request.group_by, f"<unknown {request.group_by}>")
    return ExplainRun(request.run_id, group_by, request.top)


def _group(g: Attribution) -> pb.DriftAttribution:
    return pb.DriftAttribution(
        group=g.group,
        steps=g.steps,
        samples=g.samples,
        v1_cost=g.v1_cost,
        v2_cost=g.v2_cost,
        v1_cost_per_step=g.v1_cost_per_step,
        v2_cost_per_step=g.v2_cost_per_step,
        delta=g.delta,
        abs_delta=g.abs_delta,
        share=g.share,
        share_low=g.share_low,
        share_high=g.share_high,
        flips=g.flips,
        flip_share=g.flip_share,
        flip_share_low=g.flip_share_low,
        flip_share_high=g.flip_share_high,
        v1_duration_ms=g.v1_duration_ms,
        v2_duration_ms=g.v2_duration_ms,
        duration_share=g.duration_share,
        v1_mean_risk=g.v1_mean_risk,
        v2_mean_risk=g.v2_mean_risk,
        risk_share=g.risk_share,
    )


def _histogram(h: Histogram) -> pb.CostHistogram:
    return pb.CostHistogram(
        name=h.name,
        method=h.method,
        kl=h.kl,
        edges=h.edges,
        baseline_counts=h.baseline_counts,
        candidate_counts=h.candidate_counts,
    )


def summary(e: Explanation) -> pb.CanaryExplanation:
    """The first message of the answer."""
    return pb.CanaryExplanation(
        run_id=e.run_id,
        group_by=GROUP_BY_TO_PROTO.get(e.group_by, pb.EXPLAIN_GROUP_BY_UNSPECIFIED),
        baseline_model=e.baseline_model,
        candidate_model=e.candidate_model,
        samples=e.samples,
        samples_without_steps=e.samples_without_steps,
        steps=e.steps,
        total_delta=e.total_delta,
        total_abs_delta=e.total_abs_delta,
        samples_abs_delta=e.samples_abs_delta,
        flips=e.flips,
        bootstrap_resamples=e.bootstrap.resamples,
        bootstrap_seed=e.bootstrap.seed,
        confidence_level=e.bootstrap.level,
        groups=[_group(g) for g in e.groups],
        histograms=[_histogram(h) for h in e.histograms],
        top_samples=len(e.top),
    )


def _step(s: StepBreakdown) -> pb.StepDrift:
    return pb.StepDrift(
        position=s.position,
        skill=s.skill,
        group=s.group,
        v1_cost=s.v1_cost,
        v2_cost=s.v2_cost,
        v1_latency_ms=s.v1_latency_ms,
        v2_latency_ms=s.v2_latency_ms,
        v1_risk=s.v1_risk,
        v2_risk=s.v2_risk,
        cost_delta=s.cost_delta,
        flip_weight=s.flip_weight,
    )


def drifting_sample(s: DriftingSample) -> pb.DriftingSample:
    """One of the most drifting samples as a message."""
    message = pb.DriftingSample(
        index=s.index,
        id=s.id,
        v1_cost=s.v1_cost,
        v2_cost=s.v2_cost,
        v1_duration_ms=s.v1_duration_ms,
        v2_duration_ms=s.v2_duration_ms,
        v1_feasible=s.v1_feasible,
        v2_feasible=s.v2_feasible,
        cost_delta=s.cost_delta,
        cost_delta_pct=s.cost_delta_pct,
        drift_score=s.drift_score,
        verdict=s.verdict,
        flip_causes=s.flip_causes,
        steps=[_step(x) for x in s.steps],
    )
    if isinstance(s.plan_input, dict):
        message.plan_input.update(s.plan_input)
    return message


def messages(e: Explanation) -> list[pb.ExplainCanaryRunResponse]:
    """The whole answer: the summary, then one message per drifting sample."""
    return [
        pb.ExplainCanaryRunResponse(summary=summary(e)),
        *(pb.ExplainCanaryRunResponse(sample=drifting_sample(s)) for s in e.top),
    ]
