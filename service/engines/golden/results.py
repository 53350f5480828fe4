"""What a golden comparison produces: per-model summaries, per-sample results, the verdict.

Stored in a canary report's ``golden_comparison_json`` column in the form of
:func:`golden_to_json`, and returned by CompareGolden.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from costsim_analytics.engines.findings import FailureReason, reason_from_json


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
            "reasons": tuple(reason_from_json(r) for r in data["reasons"]),
            "candidate": _summary(data["candidate"]),
            "baseline": _summary(data["baseline"]),
            "worst_samples": tuple(GoldenSampleResult(**s) for s in data["worst_samples"]),
        }
    )
