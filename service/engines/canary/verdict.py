"""A judged run: from the statistics of one canary to its rules, status and reasons.

``judge_run`` gathers each rule's evidence (``engines/canary/judge.py``), lets the configured judge
decide, and writes one :class:`FailureReason` per rule that failed or could not decide. The
messages of the predecessor's rules are unchanged under the ``legacy`` judge.

Example:
    >>> from costsim_analytics.engines.canary.judge import JUDGES
    >>> v = [float(x) for x in range(1, 101)]
    >>> run = judge_run(v, v, outliers=0, major=0, rel=None, settings=VerdictSettings(
    ...     0.2, 0.05, 0.10, None, 0.95, JUDGES["calibrated"], 0.01, 200), seed=0)
    >>> run.status, run.reasons
    ('pass', ())
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from costsim_analytics.engines import statistics as st
from costsim_analytics.engines.arrays import FloatArray
from costsim_analytics.engines.canary import judge as jd
from costsim_analytics.engines.canary import permutation as perm
from costsim_analytics.engines.findings import FailureReason, Interval
from costsim_analytics.engines.reports import Judgement, RuleDecision

# Added to the run's seed for the permutation stream (the bootstrap uses seed .. seed + 2).
PERMUTATION_SEED_OFFSET = 3
# A run's seed is a uint64 on the wire, and so is every seed a report names.
SEED_SPACE = 2**64


def derived_seed(seed: int, offset: int) -> int:
    """The seed of a run's ``offset``-th random stream: ``seed + offset``, wrapped to 64 bits.

    Example:
        >>> derived_seed(7, 3), derived_seed(2**64 - 1, 3)
        (10, 2)

    """
    return (seed + offset) % SEED_SPACE


@dataclass(frozen=True, slots=True)
class VerdictSettings:
    """The thresholds and judge settings one verdict needs (a slice of ``CanaryConfig``)."""

    drift_threshold: float
    outlier_max_pct: float
    major_drift_max_pct: float
    median_delta_tolerance: float | None
    confidence_level: float
    judge: jd.JudgeSpec
    alpha: float
    permutations: int


@dataclass(frozen=True, slots=True)
class RelativeDelta:
    """The median relative delta's interval and the bootstrap replicates behind it."""

    interval: st.ConfidenceInterval
    replicates: FloatArray


@dataclass(frozen=True, slots=True)
class JudgedRun:
    """The verdict of one run: status, reasons (failing rules first) and the judgement."""

    status: str
    reasons: tuple[FailureReason, ...]
    judgement: Judgement
    divergence: st.Divergence
    """The KL/JS under the judge's binning (what the KL rule read)."""


def _interval(ci: st.ConfidenceInterval) -> Interval | None:
    if not np.isfinite(ci.estimate):
        return None
    return Interval(ci.estimate, ci.low, ci.high, ci.level, ci.resamples)


def _share_text(rule: str) -> str:
    return "outliers" if rule == "outliers" else "major drift"


def _fail_reason(r: RuleDecision, rel: RelativeDelta | None, spec: jd.JudgeSpec) -> FailureReason:
    significance = "" if r.p_value is None else f" (p = {r.p_value:.2g} <= {r.level:.2g})"
    if r.rule == "kl_divergence":
        binning = "" if not spec.calibrated else f", {spec.binning.method} bins"
        message = f"KL divergence {r.observed:.4f} > {r.threshold}{binning}{significance}"
        return FailureReason("KL_DIVERGENCE_HIGH", r.metric, r.observed, r.threshold, ">", message)
    if r.rule in ("outliers", "major_drift"):
        code = "OUTLIERS_HIGH" if r.rule == "outliers" else "MAJOR_DRIFT_HIGH"
        message = (
            f"{_share_text(r.rule)} {r.observed:.1%} of samples > {r.threshold:.1%}{significance}"
        )
        return FailureReason(code, r.metric, r.observed, r.threshold, ">", message)
    assert rel is not None
    ci = rel.interval
    side = "above +" if ci.low > r.threshold else "below -"
    message = (
        f"median relative cost delta {ci.estimate:+.2%} with {ci.level:.0%} CI "
        f"[{ci.low:+.2%}, {ci.high:+.2%}] lies wholly {side}{r.threshold:.2%}{significance}"
    )
    return FailureReason(
        "MEDIAN_DELTA_SIGNIFICANT",
        r.metric,
        r.observed,
        r.threshold,
        "outside",
        message,
        interval=_interval(ci),
    )


def _inconclusive_reason(r: RuleDecision, n: int, confidence: float) -> FailureReason:
    code = f"{r.rule.upper()}_INCONCLUSIVE"
    if r.rule == "kl_divergence":
        message = (
            f"KL divergence {r.observed:.4f} > {r.threshold} but not significant under the "
            f"sign-flip null (p = {r.p_value:.2g} > {r.level:.2g}): sampling noise can explain it"
        )
    elif r.rule in ("outliers", "major_drift"):
        need = jd.samples_to_pass(r.threshold, confidence)
        bound = r.upper_bound if r.upper_bound is not None else float("nan")
        message = (
            f"{_share_text(r.rule)} {r.observed:.1%} of {n} samples: the {confidence:.0%} upper "
            f"bound {bound:.1%} is above the {r.threshold:.1%} limit"
        )
        if r.observed > r.threshold:
            message += f" and the excess is not significant (p = {r.p_value:.2g})"
        elif need is not None and n < need:
            message += f" (a pass needs at least {need} samples)"
    else:
        message = (
            f"median relative cost delta {r.observed:+.2%}: its interval straddles "
            f"±{r.threshold:.2%}"
        )
    return FailureReason(code, r.metric, r.observed, r.threshold, "inconclusive", message)


def judge_run(
    v1: npt.ArrayLike,
    v2: npt.ArrayLike,
    *,
    outliers: int,
    major: int,
    rel: RelativeDelta | None,
    settings: VerdictSettings,
    seed: int,
) -> JudgedRun:
    """Judge one run of ``n = len(v1)`` valid samples (at least one)."""
    base = np.asarray(v1, dtype=np.float64)
    cand = np.asarray(v2, dtype=np.float64)
    n = int(base.size)
    spec = settings.judge
    div = perm.binned(base, cand, spec.binning)
    null: perm.PermutationNull | None = None
    if spec.calibrated and settings.permutations > 0:
        null = perm.permutation_test(
            base,
            cand,
            spec.binning,
            permutations=settings.permutations,
            seed=derived_seed(seed, PERMUTATION_SEED_OFFSET),
        )
    theta = settings.drift_threshold
    inputs: list[jd.RuleInput] = [
        jd.RuleInput(
            "kl_divergence",
            "kl_divergence",
            div.kl,
            theta,
            fires=div.kl > theta,
            clear=div.kl <= theta,
            p_value=None if null is None else null.p_value,
        ),
        jd.share_rule(
            "outliers", "outlier_share", outliers, n, settings.outlier_max_pct,
            settings.confidence_level,
        ),
        jd.share_rule(
            "major_drift", "major_drift_share", major, n, settings.major_drift_max_pct,
            settings.confidence_level,
        ),
    ]  # fmt: skip
    tol = settings.median_delta_tolerance
    if tol is not None and rel is not None and np.isfinite(rel.interval.estimate):
        ci = rel.interval
        inputs.append(jd.median_rule(ci.estimate, ci.low, ci.high, rel.replicates, tol))
    results = jd.decide(inputs, spec, settings.alpha)
    status = jd.overall(results)
    reasons = [_fail_reason(r, rel, spec) for r in results if r.decision == jd.FAIL]
    reasons += [
        _inconclusive_reason(r, n, settings.confidence_level)
        for r in results
        if r.decision == jd.INCONCLUSIVE
    ]
    judgement = Judgement(
        judge=spec.name,
        kl_bin_method=spec.binning.method,
        kl_bins=div.bins,
        kl_smoothing=spec.binning.smoothing,
        kl=div.kl,
        js=div.js,
        permutations=0 if null is None else null.permutations,
        permutation_seed=0 if null is None else null.seed,
        kl_p_value=None if null is None else null.p_value,
        alpha=settings.alpha if spec.calibrated else 0.0,
        correction="holm" if spec.calibrated else "none",
        rules=tuple(results),
    )
    return JudgedRun(status, tuple(reasons), judgement, div)
