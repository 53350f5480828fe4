"""Canary reports: the stored shape, its JSON form, and the query types.

The canary engine produces reports; this module defines what a report is, how it is written to
and read from JSON (the report artifact and the ``details_json`` column share one form), and
how queries over reports are validated.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from costsim_analytics.engines.errors import InvalidArgument

CANARY_STATUSES = ("pass", "fail", "error", "skipped", "inconclusive")


@dataclass(frozen=True, slots=True)
class Interval:
    """A bootstrap confidence interval."""

    estimate: float
    low: float
    high: float
    level: float
    resamples: int


@dataclass(frozen=True, slots=True)
class PairedTestSummary:
    """The paired significance test of candidate against baseline costs."""

    method: str
    n: int
    n_nonzero: int
    statistic: float
    p_value: float
    effect_size: float
    median_difference: float


@dataclass(frozen=True, slots=True)
class RuleDecision:
    """One verdict rule's evidence and decision (``pass``, ``fail`` or ``inconclusive``)."""

    rule: str
    metric: str
    observed: float
    threshold: float
    decision: str
    p_value: float | None = None
    level: float | None = None
    """The Holm-adjusted level the p-value was compared with (calibrated judge)."""
    upper_bound: float | None = None
    """One-sided upper confidence bound of a share (calibrated judge)."""


@dataclass(frozen=True, slots=True)
class Judgement:
    """How the verdict was reached: the judge, its KL binning, each rule (docs/statistics.md)."""

    judge: str
    kl_bin_method: str
    kl_bins: int
    kl_smoothing: str
    kl: float
    """The KL divergence the verdict used (under this binning; the report's
    ``kl_divergence`` keeps the predecessor's equal-width definition)."""
    js: float
    permutations: int
    """Sign-flip permutations behind the KL p-value; 0 when the judge runs none."""
    permutation_seed: int
    kl_p_value: float | None
    alpha: float
    """The family-wise false-alarm budget the rules share (calibrated judge)."""
    correction: str
    """``"holm"`` or ``"none"``."""
    rules: tuple[RuleDecision, ...]


@dataclass(frozen=True, slots=True)
class ReportStatistics:
    """Statistics beyond the report's columns (see docs/statistics.md)."""

    js_divergence: float
    paired_test: PairedTestSummary
    median_cost_diff_ci: Interval | None
    p90_cost_diff_ci: Interval | None
    median_relative_delta_ci: Interval | None
    kl_bins: int
    kl_epsilon: float
    outlier_share: float
    major_drift_share: float
    judgement: Judgement | None = None


@dataclass(frozen=True, slots=True)
class FailureReason:
    """One reason a canary did not pass, as data and as a sentence."""

    code: str
    metric: str
    observed: float
    threshold: float
    comparator: str
    message: str
    interval: Interval | None = None


@dataclass(frozen=True, slots=True)
class ArtifactRef:
    """A stored artifact and its checksum."""

    path: str
    sha256: str
    size_bytes: int


@dataclass(frozen=True, slots=True)
class FeasibilityConfusion:
    """Expected against predicted feasibility, in samples (the model's valid samples)."""

    expected_feasible_predicted_feasible: int
    expected_feasible_predicted_infeasible: int
    expected_infeasible_predicted_feasible: int
    expected_infeasible_predicted_infeasible: int

    @property
    def flips(self) -> int:
        """Samples whose predicted feasibility differs from the expected one."""
        return (
            self.expected_feasible_predicted_infeasible
            + self.expected_infeasible_predicted_feasible
        )


@dataclass(frozen=True, slots=True)
class GoldenSummary:
    """How close one cost model comes to a golden dataset (docs/golden.md).

    The error statistics cover the samples the model could estimate (``None`` without any);
    ``within_tolerance_share`` divides by every sample, so an invalid one counts against it.
    """

    model: str
    samples: int
    invalid_samples: int
    within_tolerance: int
    within_tolerance_share: float
    mean_relative_error: float | None
    p90_relative_error: float | None
    mean_absolute_error: float | None
    max_absolute_error: float | None
    feasibility: FeasibilityConfusion


@dataclass(frozen=True, slots=True)
class GoldenSampleResult:
    """One golden sample under the candidate (and the baseline); ``None``: not estimated."""

    id: str
    expected_cost_cents: float
    expected_feasible: bool
    candidate_cost_cents: float | None
    candidate_feasible: bool
    absolute_error: float | None
    relative_error: float | None
    within_tolerance: bool
    baseline_cost_cents: float | None
    baseline_feasible: bool
    baseline_relative_error: float | None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class GoldenComparison:
    """The candidate judged against one exact golden dataset version, the baseline beside it."""

    dataset_name: str
    dataset_version: int
    dataset_sha256: str
    candidate_model: str
    baseline_model: str
    tolerance: float
    min_share: float
    max_feasibility_flips: int
    passed: bool
    reasons: tuple[FailureReason, ...]
    candidate: GoldenSummary
    baseline: GoldenSummary
    mean_relative_error_delta: float | None
    closer_samples: int
    farther_samples: int
    tied_samples: int
    direction: str
    worst_samples: tuple[GoldenSampleResult, ...]


@dataclass(frozen=True, slots=True)
class CanaryReport:
    """One canary run's verdict and metrics (table ``costsim_canary_reports``)."""

    run_id: str
    timestamp: datetime
    status: str
    total_samples: int
    matching_samples: int
    minor_drift_samples: int
    major_drift_samples: int
    median_cost_diff: float | None
    p90_cost_diff: float | None
    kl_divergence: float | None
    outlier_count: int
    passed: bool
    failure_reasons: tuple[str, ...] = ()
    artifact_paths: tuple[str, ...] = ()
    golden_comparison: GoldenComparison | None = None
    reasons: tuple[FailureReason, ...] = ()
    statistics: ReportStatistics | None = None
    artifacts: tuple[ArtifactRef, ...] = ()
    baseline_model: str = ""
    candidate_model: str = ""
    invalid_samples: int = 0
    sample_source: str = ""
    seed: int = 0
    # Set by storage.
    id: int = 0
    created_at: datetime | None = None


DETAIL_FIELDS = ("reasons", "statistics", "artifacts", "invalid_samples", "sample_source", "seed")


def details_to_json(report: CanaryReport) -> dict[str, Any]:
    """The report's structured details (everything without a column of its own)."""
    return {name: _plain(getattr(report, name)) for name in DETAIL_FIELDS}


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(item) for item in value]
    if hasattr(value, "__dataclass_fields__"):
        return asdict(value)
    return value


def _interval(data: dict[str, Any] | None) -> Interval | None:
    return None if data is None else Interval(**data)


def _judgement(data: dict[str, Any] | None) -> Judgement | None:
    if data is None:
        return None
    return Judgement(**{**data, "rules": tuple(RuleDecision(**r) for r in data["rules"])})


def _reason(data: dict[str, Any]) -> FailureReason:
    return FailureReason(**{**data, "interval": _interval(data.get("interval"))})


def golden_to_json(comparison: GoldenComparison | None) -> dict[str, Any] | None:
    """A golden comparison as JSON-ready data (the ``golden_comparison_json`` column's form)."""
    if comparison is None:
        return None
    data = asdict(comparison)
    data["reasons"] = [asdict(r) for r in comparison.reasons]
    data["worst_samples"] = [asdict(s) for s in comparison.worst_samples]
    return data


def _summary(data: dict[str, Any]) -> GoldenSummary:
    return GoldenSummary(**{**data, "feasibility": FeasibilityConfusion(**data["feasibility"])})


def golden_from_json(data: dict[str, Any] | None) -> GoldenComparison | None:
    """Inverse of :func:`golden_to_json`."""
    if not data:
        return None
    return GoldenComparison(
        **{
            **data,
            "reasons": tuple(_reason(r) for r in data["reasons"]),
            "candidate": _summary(data["candidate"]),
            "baseline": _summary(data["baseline"]),
            "worst_samples": tuple(GoldenSampleResult(**s) for s in data["worst_samples"]),
        }
    )


def details_from_json(data: dict[str, Any] | None) -> dict[str, Any]:
    """Keyword arguments for :class:`CanaryReport` from :func:`details_to_json` output."""
    if not data:
        return {}
    stats = data.get("statistics")
    statistics = None
    if stats is not None:
        statistics = ReportStatistics(
            **{
                **stats,
                "paired_test": PairedTestSummary(**stats["paired_test"]),
                "median_cost_diff_ci": _interval(stats["median_cost_diff_ci"]),
                "p90_cost_diff_ci": _interval(stats["p90_cost_diff_ci"]),
                "median_relative_delta_ci": _interval(stats["median_relative_delta_ci"]),
                "judgement": _judgement(stats.get("judgement")),
            }
        )
    return {
        "reasons": tuple(_reason(r) for r in data.get("reasons", [])),
        "statistics": statistics,
        "artifacts": tuple(ArtifactRef(**a) for a in data.get("artifacts", [])),
        "invalid_samples": int(data.get("invalid_samples", 0)),
        "sample_source": str(data.get("sample_source", "")),
        "seed": int(data.get("seed", 0)),
    }


_SCALARS = (
    "run_id",
    "status",
    "total_samples",
    "matching_samples",
    "minor_drift_samples",
    "major_drift_samples",
    "median_cost_diff",
    "p90_cost_diff",
    "kl_divergence",
    "outlier_count",
    "passed",
    "baseline_model",
    "candidate_model",
)


def report_to_json(report: CanaryReport) -> dict[str, Any]:
    """The whole report as JSON-ready data (the report artifact's form)."""
    data: dict[str, Any] = {name: getattr(report, name) for name in _SCALARS}
    data["timestamp"] = report.timestamp.isoformat()
    data["failure_reasons"] = list(report.failure_reasons)
    data["artifact_paths"] = list(report.artifact_paths)
    data["golden_comparison"] = golden_to_json(report.golden_comparison)
    data.update(details_to_json(report))
    return data


def report_from_json(data: dict[str, Any]) -> CanaryReport:
    """Inverse of :func:`report_to_json` (id and created_at are left unset)."""
    return CanaryReport(
        timestamp=datetime.fromisoformat(data["timestamp"]),
        failure_reasons=tuple(data.get("failure_reasons", [])),
        artifact_paths=tuple(data.get("artifact_paths", [])),
        golden_comparison=golden_from_json(data.get("golden_comparison")),
        **{name: data[name] for name in _SCALARS if name in data},
        **details_from_json(data),
    )


@dataclass(frozen=True, slots=True)
class ReportFilter:
    """Filters of QueryCanaryReports; empty status and None match everything."""

    status: str = ""
    passed: bool | None = None
    start_time: datetime | None = None
    end_time: datetime | None = None

    def as_dict(self) -> dict[str, object]:
        """The filters by name, for fingerprints."""
        return {
            "status": self.status,
            "passed": self.passed,
            "start_time": self.start_time,
            "end_time": self.end_time,
        }


@dataclass(frozen=True, slots=True)
class ReportQuery:
    """The QueryCanaryReports command."""

    filter: ReportFilter = field(default_factory=ReportFilter)
    page_size: int = 0
    page_token: str = ""


def validate_run_id(run_id: str) -> None:
    """A report lookup needs a non-empty run id of sane length."""
    if not run_id:
        raise InvalidArgument.field("run_id", "must not be empty")
    if len(run_id) > 256:
        raise InvalidArgument.field("run_id", "must be at most 256 characters")


def validate_report_filter(flt: ReportFilter) -> None:
    """Reject a status that no report can have."""
    if flt.status and flt.status not in CANARY_STATUSES:
        raise InvalidArgument.field("status", f"must be one of {list(CANARY_STATUSES)}")
