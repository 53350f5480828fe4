"""Proto <-> domain conversion of the golden datasets and comparisons.

``api/convert_canary.py`` puts a comparison into a canary report with :func:`comparison`. The
servicer, the client and the CLI are the only callers; domain types know nothing of protobuf.
"""

from __future__ import annotations

from dataclasses import asdict

from costsim.analytics.v1 import analytics_pb2 as pb
from costsim_analytics.api import convert
from costsim_analytics.engines.golden.commands import (
    ActivateGoldenDataset,
    CompareGolden,
    CreateGoldenDataset,
    GetGoldenDataset,
    ListGoldenDatasets,
    PromoteCanaryRun,
    StoredVersion,
)
from costsim_analytics.engines.golden.datasets import GoldenDataset, GoldenSample
from costsim_analytics.engines.golden.results import (
    GoldenComparison,
    GoldenSampleResult,
    GoldenSummary,
)

# --- samples and datasets ----------------------------------------------------------------------

# A version's scalar fields, named alike in GoldenDataset and the message.
_VERSION_FIELDS = ("name", "version", "sha256", "description", "source", "sample_count", "active")


def sample(s: pb.GoldenSample) -> GoldenSample:
    """A request sample as the domain's (numbers stay floats; the engine normalises them)."""
    plan = convert.struct_to_dict(s.plan_input) if s.HasField("plan_input") else None
    duration = convert.optional(s, "expected_duration_ms")
    return GoldenSample(s.id, plan, s.expected_cost_cents, s.expected_feasible, duration)


def sample_message(s: GoldenSample) -> pb.GoldenSample:
    """A domain sample as a message."""
    msg = pb.GoldenSample(
        id=s.id,
        expected_cost_cents=s.expected_cost_cents,
        expected_feasible=s.expected_feasible,
        expected_duration_ms=s.expected_duration_ms,
    )
    if s.plan_input is not None:
        msg.plan_input.update(s.plan_input)
    return msg


def dataset_message(d: GoldenDataset) -> pb.GoldenDataset:
    """A stored version as a message (with its samples, if it carries them)."""
    return pb.GoldenDataset(
        **{name: getattr(d, name) for name in _VERSION_FIELDS},
        created_at=convert.to_timestamp(d.created_at),
        samples=[sample_message(s) for s in d.samples],
    )


def dataset(msg: pb.GoldenDataset) -> GoldenDataset:
    """A message as a domain version (for clients: the CLI's export)."""
    return GoldenDataset(
        **{name: getattr(msg, name) for name in _VERSION_FIELDS},
        created_at=convert.timestamp(msg.created_at),
        samples=tuple(sample(s) for s in msg.samples),
    )


# --- requests ----------------------------------------------------------------------------------


def create(request: pb.CreateGoldenDatasetRequest) -> CreateGoldenDataset:
    """CreateGoldenDatasetRequest -> command."""
    samples = tuple(sample(s) for s in request.samples)
    return CreateGoldenDataset(request.name, request.description, samples, request.request_id)


def promote(request: pb.PromoteCanaryRunRequest) -> PromoteCanaryRun:
    """PromoteCanaryRunRequest -> command."""
    return PromoteCanaryRun(request.run_id, request.name, request.description, request.request_id)


def stored(result: StoredVersion) -> tuple[pb.GoldenDataset, bool]:
    """A stored version (without samples) and whether it was replayed."""
    return dataset_message(result.dataset), result.replayed


def get(request: pb.GetGoldenDatasetRequest) -> GetGoldenDataset:
    """GetGoldenDatasetRequest -> query."""
    return GetGoldenDataset(name=request.name, version=convert.optional(request, "version"))


def list_datasets(request: pb.ListGoldenDatasetsRequest) -> ListGoldenDatasets:
    """ListGoldenDatasetsRequest -> command."""
    return ListGoldenDatasets(request.name)


def activate(request: pb.ActivateGoldenDatasetRequest) -> ActivateGoldenDataset:
    """ActivateGoldenDatasetRequest -> command."""
    return ActivateGoldenDataset(name=request.name, version=request.version)


def compare(request: pb.CompareGoldenRequest) -> CompareGolden:
    """CompareGoldenRequest -> command."""
    return CompareGolden(
        name=request.name,
        version=convert.optional(request, "version"),
        candidate_model=request.candidate_model,
        baseline_model=request.baseline_model,
        tolerance=convert.optional(request, "tolerance"),
        min_share=convert.optional(request, "min_share"),
        max_feasibility_flips=convert.optional(request, "max_feasibility_flips"),
        worst_samples=convert.optional(request, "worst_samples"),
    )


# --- comparisons -------------------------------------------------------------------------------


# The domain types below name their fields as the messages do: each converts field for field,
# its nested messages and the derived ``flips`` added.


def _summary(s: GoldenSummary) -> pb.GoldenSummary:
    f = s.feasibility
    feasibility = pb.FeasibilityConfusion(**asdict(f), flips=f.flips)
    return pb.GoldenSummary(**{**asdict(s), "feasibility": feasibility})


def _result(r: GoldenSampleResult) -> pb.GoldenSampleResult:
    return pb.GoldenSampleResult(**{**asdict(r), "error": r.error or ""})


def comparison(c: GoldenComparison) -> pb.GoldenComparison:
    """A golden comparison as a message."""
    return pb.GoldenComparison(
        **{
            **asdict(c),
            "reasons": [convert.failure_reason(r) for r in c.reasons],
            "candidate": _summary(c.candidate),
            "baseline": _summary(c.baseline),
            "worst_samples": [_result(r) for r in c.worst_samples],
        }
    )
