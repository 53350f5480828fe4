"""The golden comparison: a candidate cost model judged against a golden dataset version.

Pure and vectorised (numpy, no grpc, no SQL); the definitions are docs/golden.md. The
candidate and the baseline run over every sample with ``estimate_batch`` (the plans are read
once for both); per sample, the absolute cost error ``|predicted - expected|``, the relative
error ``absolute / max(expected, 1)`` and feasibility agreement; per model a
:class:`~costsim_analytics.engines.golden.results.GoldenSummary`; then the verdict (at least
``min_share`` of the samples within ``tolerance``, at most ``max_feasibility_flips`` flips) and
whether the candidate moved toward the reference or away from it, compared with the baseline.
:func:`judge_report` adds a failed comparison to a canary report as its reasons.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace

import numpy as np
import numpy.typing as npt

from costsim_analytics.engines import statistics as st
from costsim_analytics.engines.cost_models import BatchEstimates, CostModel, PlanBatch
from costsim_analytics.engines.errors import FieldViolation
from costsim_analytics.engines.findings import FailureReason
from costsim_analytics.engines.golden.commands import CompareGolden
from costsim_analytics.engines.golden.datasets import GoldenDataset, GoldenSample, raise_if
from costsim_analytics.engines.golden.results import (
    FeasibilityConfusion,
    GoldenComparison,
    GoldenSampleResult,
    GoldenSummary,
)
from costsim_analytics.engines.reports import CanaryReport

MAX_WORST = 1000
FAILED = "GOLDEN_COMPARISON_FAILED"


@dataclass(frozen=True, slots=True)
class GoldenConfig:
    """Pass/fail thresholds of a comparison (docs/golden.md defaults)."""

    tolerance: float = 0.10
    min_share: float = 0.95
    max_feasibility_flips: int = 0
    worst_samples: int = 10


# --- comparison --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelErrors:
    """One model's errors on every sample (NaN where the model could not estimate it)."""

    estimates: BatchEstimates
    absolute: npt.NDArray[np.float64]
    relative: npt.NDArray[np.float64]
    within: npt.NDArray[np.bool_]


def model_errors(
    estimates: BatchEstimates, expected: npt.NDArray[np.float64], tolerance: float
) -> ModelErrors:
    """|predicted - expected|, that over max(expected, 1), and whether it is <= tolerance."""
    absolute = np.abs(estimates.cost_cents - expected)
    relative = absolute / np.maximum(expected, 1.0)
    return ModelErrors(estimates, absolute, relative, estimates.valid & (relative <= tolerance))


def _optional(value: float) -> float | None:
    return None if math.isnan(value) else value


def summarise(
    model: str, errors: ModelErrors, expected_feasible: npt.NDArray[np.bool_]
) -> GoldenSummary:
    """Counts, shares and error statistics of one model."""
    valid = errors.estimates.valid
    n, n_valid = valid.size, int(valid.sum())
    relative, absolute = errors.relative[valid], errors.absolute[valid]
    within = int(errors.within.sum())
    exp, pred = expected_feasible[valid], errors.estimates.feasible[valid]
    cells = np.bincount(2 * (~exp).astype(np.intp) + (~pred).astype(np.intp), minlength=4)
    return GoldenSummary(
        model=model,
        samples=n,
        invalid_samples=n - n_valid,
        within_tolerance=within,
        within_tolerance_share=within / n if n else 0.0,
        mean_relative_error=float(relative.mean()) if n_valid else None,
        p90_relative_error=_optional(st.percentile(relative, 90)),
        mean_absolute_error=float(absolute.mean()) if n_valid else None,
        max_absolute_error=float(absolute.max()) if n_valid else None,
        feasibility=FeasibilityConfusion(*(int(c) for c in cells)),
    )


def _reasons(dataset: GoldenDataset, s: GoldenSummary, config: GoldenConfig) -> list[FailureReason]:
    label = f"golden {dataset.name} v{dataset.version}"
    reasons = []
    if s.within_tolerance_share < config.min_share:
        reasons.append(
            FailureReason(
                FAILED,
                "golden_within_tolerance_share",
                s.within_tolerance_share,
                config.min_share,
                "<",
                f"{label}: {s.within_tolerance_share:.1%} of samples within "
                f"{config.tolerance:.0%} of the expected cost < {config.min_share:.0%}",
            )
        )
    flips = s.feasibility.flips
    if flips > config.max_feasibility_flips:
        reasons.append(
            FailureReason(
                FAILED,
                "golden_feasibility_flips",
                float(flips),
                float(config.max_feasibility_flips),
                ">",
                f"{label}: {flips} feasibility flips > {config.max_feasibility_flips}",
            )
        )
    return reasons


def _worst(
    samples: Sequence[GoldenSample], cand: ModelErrors, base: ModelErrors, k: int
) -> tuple[GoldenSampleResult, ...]:
    """Unestimated samples first, then feasibility flips, then by relative and absolute error."""
    expected_feasible = np.array([s.expected_feasible for s in samples], dtype=np.bool_)
    valid = cand.estimates.valid
    flip = valid & (cand.estimates.feasible != expected_feasible)
    rel = np.where(valid, cand.relative, np.inf)
    abs_ = np.where(valid, cand.absolute, np.inf)
    order = np.lexsort((np.arange(len(samples)), -abs_, -rel, ~flip, valid))[:k]
    return tuple(
        GoldenSampleResult(
            id=samples[i].id,
            expected_cost_cents=float(samples[i].expected_cost_cents),
            expected_feasible=samples[i].expected_feasible,
            candidate_cost_cents=_optional(float(cand.estimates.cost_cents[i])),
            candidate_feasible=bool(cand.estimates.feasible[i]),
            absolute_error=_optional(float(cand.absolute[i])),
            relative_error=_optional(float(cand.relative[i])),
            within_tolerance=bool(cand.within[i]),
            baseline_cost_cents=_optional(float(base.estimates.cost_cents[i])),
            baseline_feasible=bool(base.estimates.feasible[i]),
            baseline_relative_error=_optional(float(base.relative[i])),
            error=cand.estimates.errors[i],
        )
        for i in order.tolist()
    )


def compare(
    dataset: GoldenDataset, candidate: CostModel, baseline: CostModel, config: GoldenConfig
) -> GoldenComparison:
    """Judge ``candidate`` against the dataset's expectations, with ``baseline`` beside it."""
    samples = dataset.samples
    n = len(samples)
    inputs = PlanBatch([s.plan_input for s in samples])
    expected = np.fromiter((s.expected_cost_cents for s in samples), np.float64, n)
    expected_feasible = np.fromiter((s.expected_feasible for s in samples), np.bool_, n)
    cand = model_errors(candidate.estimate_batch(inputs), expected, config.tolerance)
    base = model_errors(baseline.estimate_batch(inputs), expected, config.tolerance)
    cs = summarise(candidate.name, cand, expected_feasible)
    bs = summarise(baseline.name, base, expected_feasible)
    both = cand.estimates.valid & base.estimates.valid
    ca, ba = cand.absolute[both], base.absolute[both]
    closer, farther = int((ca < ba).sum()), int((ca > ba).sum())
    delta = None
    if cs.mean_relative_error is not None and bs.mean_relative_error is not None:
        delta = cs.mean_relative_error - bs.mean_relative_error
    direction = "unchanged" if not delta else ("toward" if delta < 0 else "away")
    reasons = _reasons(dataset, cs, config)
    return GoldenComparison(
        dataset_name=dataset.name,
        dataset_version=dataset.version,
        dataset_sha256=dataset.sha256,
        candidate_model=candidate.name,
        baseline_model=baseline.name,
        tolerance=config.tolerance,
        min_share=config.min_share,
        max_feasibility_flips=config.max_feasibility_flips,
        passed=not reasons,
        reasons=tuple(reasons),
        candidate=cs,
        baseline=bs,
        mean_relative_error_delta=delta,
        closer_samples=closer,
        farther_samples=farther,
        tied_samples=int(both.sum()) - closer - farther,
        direction=direction,
        worst_samples=_worst(samples, cand, base, config.worst_samples),
    )


def judge_report(report: CanaryReport, comparison: GoldenComparison) -> CanaryReport:
    """The canary report with the comparison attached; a failed one fails a passing report.

    A failed comparison also fails an ``inconclusive`` report (it is decisive evidence on its
    own); a report that is already ``fail`` or ``error`` keeps its status and gains the reasons.
    """
    extra = comparison.reasons
    decidable = report.status in ("pass", "inconclusive")
    status = "fail" if decidable and extra else report.status
    return replace(
        report,
        golden_comparison=comparison,
        status=status,
        passed=status == "pass",
        reasons=report.reasons + extra,
        failure_reasons=report.failure_reasons + tuple(r.message for r in extra),
    )


def resolve_config(cmd: CompareGolden, defaults: GoldenConfig) -> GoldenConfig:
    """The configured thresholds with the request's overrides, validated."""
    bad = []
    if cmd.tolerance is not None and not (math.isfinite(cmd.tolerance) and cmd.tolerance >= 0):
        bad.append(FieldViolation("tolerance", "must be a finite number >= 0"))
    if cmd.min_share is not None and not (math.isfinite(cmd.min_share) and 0 <= cmd.min_share <= 1):
        bad.append(FieldViolation("min_share", "must be a share between 0 and 1"))
    if cmd.max_feasibility_flips is not None and cmd.max_feasibility_flips < 0:
        bad.append(FieldViolation("max_feasibility_flips", "must be 0 or more"))
    if cmd.worst_samples is not None and not 0 <= cmd.worst_samples <= MAX_WORST:
        bad.append(FieldViolation("worst_samples", f"must be between 0 and {MAX_WORST}"))
    raise_if(bad)
    # The command names each threshold as GoldenConfig does; None keeps the default.
    requested = {f.name: getattr(cmd, f.name) for f in fields(defaults)}
    return replace(defaults, **{k: v for k, v in requested.items() if v is not None})
