"""Canary reports: the stored shape, its JSON form, and the query types.

The canary engine produces reports; this module defines what a report is, how it is written to
and read from JSON (the report artifact and the ``details_json`` column share one form), and
how queries over reports are validated.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from costsim_analytics.engines.errors import InvalidArgument
from costsim_analytics.engines.findings import (
    FailureReason,
    Interval,
    interval_from_json,
    plain,
    reason_from_json,
)
from costsim_analytics.engines.golden.results import (
    GoldenComparison,
    golden_from_json,
    golden_to_json,
)
from costsim_analytics.engines.text import text_problem

CANARY_STATUSES = ("pass", "fail", "error", "skipped", "inconclusive")


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
class ArtifactRef:
    """A stored artifact and its checksum."""

    path: str
    sha256: str
    size_bytes: int


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
    return {name: plain(getattr(report, name)) for name in DETAIL_FIELDS}


def _judgement(data: dict[str, Any] | None) -> Judgement | None:
    if data is None:
        return None
    return Judgement(**{**data, "rules": tuple(RuleDecision(**r) for r in data["rules"])})


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
                "median_cost_diff_ci": interval_from_json(stats["median_cost_diff_ci"]),
                "p90_cost_diff_ci": interval_from_json(stats["p90_cost_diff_ci"]),
                "median_relative_delta_ci": interval_from_json(stats["median_relative_delta_ci"]),
                "judgement": _judgement(stats.get("judgement")),
            }
        )
    return {
        "reasons": tuple(reason_from_json(r) for r in data.get("reasons", [])),
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


@dataclass(frozen=True, slots=True)
class GetReport:
    """The GetCanaryReport command: one report by its run id."""

    run_id: str


def validate_run_id(run_id: str) -> None:
    """A report lookup needs a non-empty run id of sane length."""
    if not run_id:
        raise InvalidArgument.field("run_id", "must not be empty")
    if len(run_id) > 256:
        raise InvalidArgument.field("run_id", "must be at most 256 characters")
    problem = text_problem(run_id)
    if problem is not None:
        raise InvalidArgument.field("run_id", problem)


def validate_report_filter(flt: ReportFilter) -> None:
    """Reject a status that no report can have."""
    if flt.status and flt.status not in CANARY_STATUSES:
        raise InvalidArgument.field("status", f"must be one of {list(CANARY_STATUSES)}")
