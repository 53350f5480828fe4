"""Canary statistics: per-sample drift, percentiles, divergence, paired test.

The bootstrap lives in ``engines/resampling.py`` and is re-exported here.
Pure and vectorised (numpy/scipy): no grpc, no SQL, no Python loop over samples. Every
definition, default and reference is in ``docs/statistics.md``; the docstrings here say what
each function returns. Inputs are 1-D array-likes of finite numbers (costs in cents); anything
else raises ``ValueError``, because a NaN cost is a caller's bug and not a statistic.

Example:
    >>> d = drift([100.0, 100.0, 0.0], [104.0, 130.0, 50.0], [True, True, True],
    ...           [True, True, False])
    >>> [VERDICT_NAMES[v] for v in d.verdict]
    ['MATCH', 'MAJOR_DRIFT', 'MISMATCH']
    >>> percentile([1.0, 2.0, 3.0, 4.0], 90)
    3.7

"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import special, stats

from costsim_analytics.engines.arrays import FloatArray
from costsim_analytics.engines.arrays import as_flags as _flags
from costsim_analytics.engines.arrays import as_vector as _vector
from costsim_analytics.engines.resampling import (
    BOOTSTRAP_STATISTICS,
    CHUNK_ELEMENTS,
    ORDER_STATISTICS_METHOD,
    RESAMPLING_METHOD,
    ConfidenceInterval,
    bootstrap_ci,
    bootstrap_replicates,
    order_statistic_replicates,
)
from costsim_analytics.engines.signed_rank import exact_p_value

__all__ = [
    "BOOTSTRAP_STATISTICS",
    "CHUNK_ELEMENTS",
    "EXACT_TIES_METHOD",
    "MAJOR_DRIFT",
    "MATCH",
    "MAX_BINS",
    "MAX_EXACT_PAIRS",
    "MINOR_DRIFT",
    "MIN_WILCOXON_PAIRS",
    "MISMATCH",
    "ORDER_STATISTICS_METHOD",
    "RESAMPLING_METHOD",
    "VERDICT_EDGES",
    "VERDICT_NAMES",
    "ConfidenceInterval",
    "Divergence",
    "Drift",
    "PairedTest",
    "bin_count",
    "bootstrap_ci",
    "bootstrap_replicates",
    "classify",
    "divergence",
    "drift",
    "interpolate",
    "order_statistic_replicates",
    "outliers",
    "paired_test",
    "percentile",
    "percentile_rank",
]

MATCH, MINOR_DRIFT, MAJOR_DRIFT, MISMATCH = 0, 1, 2, 3
VERDICT_NAMES = ("MATCH", "MINOR_DRIFT", "MAJOR_DRIFT", "MISMATCH")
# Upper (inclusive) edge of MATCH, MINOR_DRIFT and MAJOR_DRIFT; above the last is MISMATCH.
VERDICT_EDGES = (0.05, 0.15, 0.30)

# Default binning for ``divergence``: never more bins than this, nor than sqrt(smaller sample).
MAX_BINS = 100
# Paired test: below this many non-zero differences the sign test replaces Wilcoxon.
MIN_WILCOXON_PAIRS = 10
# Wilcoxon's exact null distribution is used up to this many non-zero differences; with tied
# magnitudes the exact conditional one given the average ranks (``EXACT_TIES_METHOD``).
MAX_EXACT_PAIRS = 50
EXACT_TIES_METHOD = "exact (ties)"

# --- Per-sample drift --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Drift:
    """Per-sample drift of the candidate (V2) from the baseline (V1); arrays of equal length."""

    cost_delta: FloatArray
    """``v2 - v1`` in cents."""
    cost_delta_pct: FloatArray
    """``|v2 - v1| / max(v1, 1)``, and 0 where ``v1 == 0``."""
    drift_score: FloatArray
    """``0.6 * min(cost_delta_pct, 1) + 0.4 * (feasibility differs)``."""
    verdict: npt.NDArray[np.int8]
    """``classify(drift_score)``: MATCH, MINOR_DRIFT, MAJOR_DRIFT or MISMATCH."""


def drift(
    v1_cost: npt.ArrayLike,
    v2_cost: npt.ArrayLike,
    v1_feasible: npt.ArrayLike,
    v2_feasible: npt.ArrayLike,
) -> Drift:
    """Drift of every sample, by the domain rule (docs/domain.md).

    The operations run in the predecessor's order, so every score is bit-identical to its
    per-sample Python and a score on a band edge lands in the same band.

    Raises:
        ValueError: the four inputs are not 1-D of one length, or a cost is not finite.
    """
    v1 = _vector(v1_cost, "v1_cost")
    v2 = _vector(v2_cost, "v2_cost")
    f1 = _flags(v1_feasible, "v1_feasible")
    f2 = _flags(v2_feasible, "v2_feasible")
    if not v1.size == v2.size == f1.size == f2.size:
        raise ValueError(
            "v1_cost, v2_cost, v1_feasible and v2_feasible must have one length, got "
            f"{v1.size}, {v2.size}, {f1.size}, {f2.size}"
        )
    cost_delta = v2 - v1
    pct = np.where(v1 == 0.0, 0.0, np.abs(cost_delta) / np.maximum(v1, 1.0))
    score = 0.6 * np.minimum(pct, 1.0) + 0.4 * (f1 != f2).astype(np.float64)
    return Drift(cost_delta, pct, score, classify(score))


def classify(drift_score: npt.ArrayLike) -> npt.NDArray[np.int8]:
    """Verdict of each score: MATCH <= 0.05 < MINOR_DRIFT <= 0.15 < MAJOR_DRIFT <= 0.30 < MISMATCH.

    Example:
        >>> classify([0.05, 0.0500001, 0.15, 0.3, 0.4]).tolist()
        [0, 1, 1, 2, 3]

    """
    score = _vector(drift_score, "drift_score")
    # side="left": a score equal to an edge belongs to the band below it.
    return np.searchsorted(VERDICT_EDGES, score, side="left").astype(np.int8)


def outliers(drift_score: npt.ArrayLike, threshold: float) -> npt.NDArray[np.bool_]:
    """Mask of the samples whose drift score is strictly above ``threshold`` (default rule 0.5)."""
    return _vector(drift_score, "drift_score") > threshold


def percentile(values: npt.ArrayLike, q: float) -> float:
    """The ``q``-th percentile (``q`` in [0, 100]), Hyndman & Fan type 7; ``nan`` when empty.

    Linear interpolation between closest ranks: numpy's ``linear`` method and PostgreSQL's
    ``percentile_cont``.

    Example:
        >>> percentile([0.0, 10.0], 90)
        9.0

    Raises:
        ValueError: ``q`` is outside [0, 100] or a value is not finite.
    """
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"q must be in [0, 100], got {q}")
    array = _vector(values, "values")
    if array.size == 0:
        return math.nan
    return float(np.percentile(array, q, method="linear"))


def percentile_rank(q: float, n: int) -> tuple[int, float]:
    """The lower rank and the weight of :func:`percentile` ``q`` among ``n`` sorted values.

    For storage that fetches only the two neighbouring order statistics (SQLite's drift
    statistics): the percentile is ``interpolate(x[rank], x[rank + 1], weight)``.

    Example:
        >>> percentile_rank(90, 11)
        (9, 0.0)

    """
    h = q / 100.0 * (n - 1)
    lower = math.floor(h)
    return lower, h - lower


def interpolate(lower_value: float, upper_value: float, weight: float) -> float:
    """Linear interpolation between two neighbouring order statistics (type 7)."""
    return lower_value + weight * (upper_value - lower_value)


# --- Distribution divergence -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Divergence:
    """KL and Jensen-Shannon divergence of two histograms on shared edges, in nats."""

    kl: float
    """KL(baseline || candidate) of the smoothed histograms, natural log (nats)."""
    js: float
    """Jensen-Shannon divergence of the unsmoothed histograms, nats, in [0, ln 2]."""
    edges: tuple[float, ...]
    baseline_counts: tuple[int, ...]
    candidate_counts: tuple[int, ...]
    epsilon: float
    """Added to each bin's relative frequency before renormalising (KL only)."""
    bins: int


def bin_count(pooled: FloatArray, smaller_sample: int) -> int:
    """Default number of bins: Freedman-Diaconis on the pooled sample, capped.

    Width ``2 * IQR * N ** (-1/3)``, Sturges (``ceil(log2 N) + 1``) when that width is 0,
    one bin when the range is 0; at least 1, at most ``min(MAX_BINS, isqrt(smaller_sample))``.
    """
    low, high = float(pooled.min()), float(pooled.max())
    cap = max(1, min(MAX_BINS, math.isqrt(smaller_sample)))
    if high == low:
        return 1
    q75, q25 = np.percentile(pooled, [75.0, 25.0], method="linear")
    width = 2.0 * float(q75 - q25) * math.pow(pooled.size, -1.0 / 3.0)
    if width > 0.0:
        wanted = math.ceil(min((high - low) / width, float(cap)))
    else:
        wanted = math.ceil(math.log2(pooled.size)) + 1
    return max(1, min(wanted, cap))


def divergence(
    baseline: npt.ArrayLike,
    candidate: npt.ArrayLike,
    *,
    bins: int | None = None,
    epsilon: float = 1e-6,
) -> Divergence:
    """KL(baseline || candidate) and JS divergence of the two cost distributions.

    Both samples are binned on the same equal-width edges over the pooled range (``bins``, or
    ``bin_count`` when ``None``; a zero range becomes ``[v - 0.5, v + 0.5]``). Equal relative
    frequencies give exactly 0.0 for both. Either sample empty gives ``nan`` and no bins.

    Example:
        >>> divergence([1.0, 2.0, 3.0], [1.0, 2.0, 3.0]).kl
        0.0

    Raises:
        ValueError: ``bins`` < 1, ``epsilon`` <= 0, or a value is not finite.
    """
    if bins is not None and bins < 1:
        raise ValueError(f"bins must be at least 1, got {bins}")
    if not epsilon > 0.0:
        raise ValueError(f"epsilon must be positive, got {epsilon}")
    base = _vector(baseline, "baseline")
    cand = _vector(candidate, "candidate")
    if base.size == 0 or cand.size == 0:
        return Divergence(math.nan, math.nan, (), (), (), epsilon, 0)
    pooled = np.concatenate([base, cand])
    k = bins if bins is not None else bin_count(pooled, min(base.size, cand.size))
    low, high = float(pooled.min()), float(pooled.max())
    if high == low:
        low, high = low - 0.5, high + 0.5
    edges = np.linspace(low, high, k + 1)
    base_counts, _ = np.histogram(base, bins=edges)
    cand_counts, _ = np.histogram(cand, bins=edges)
    p = base_counts / base.size
    q = cand_counts / cand.size
    kl = js = 0.0
    # Short-circuit: identical histograms are exactly 0, never a rounding residue.
    if not np.array_equal(p, q):
        p_smooth = (p + epsilon) / (1.0 + k * epsilon)
        q_smooth = (q + epsilon) / (1.0 + k * epsilon)
        kl = max(0.0, float(special.rel_entr(p_smooth, q_smooth).sum()))
        m = 0.5 * (p + q)
        js_raw = 0.5 * special.rel_entr(p, m).sum() + 0.5 * special.rel_entr(q, m).sum()
        js = min(math.log(2.0), max(0.0, float(js_raw)))
    return Divergence(
        kl=kl,
        js=js,
        edges=tuple(float(e) for e in edges),
        baseline_counts=tuple(int(c) for c in base_counts),
        candidate_counts=tuple(int(c) for c in cand_counts),
        epsilon=epsilon,
        bins=k,
    )


# --- Paired significance test ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PairedTest:
    """Two-sided paired test of ``candidate - baseline`` (the same inputs through both models)."""

    method: str
    """``"wilcoxon"``, ``"sign"`` (fallback) or ``"none"`` (no non-zero difference)."""
    n: int
    n_nonzero: int
    statistic: float
    """Wilcoxon: min(R+, R-). Sign test: the number of positive differences. None: 0."""
    p_value: float
    """Two-sided; 1.0 when ``method == "none"``."""
    effect_size: float
    """Wilcoxon: rank-biserial (R+ - R-) / (R+ + R-); sign: (n+ - n-) / n_nonzero."""
    median_difference: float
    """Median of ``candidate - baseline`` over all pairs (``nan`` when there are none)."""
    n_positive: int = 0
    n_negative: int = 0
    p_value_method: str = ""
    """``"exact"``, ``"exact (ties)"``, ``"asymptotic"`` (Wilcoxon), ``"binomial exact"``
    (sign) or ``""``."""


def _sign_test(n: int, n_pos: int, n_neg: int, median: float) -> PairedTest:
    """Exact two-sided binomial sign test on the non-zero differences."""
    n_nonzero = n_pos + n_neg
    p_value = float(stats.binomtest(n_pos, n_nonzero, 0.5, alternative="two-sided").pvalue)
    effect = (n_pos - n_neg) / n_nonzero
    return PairedTest(
        "sign", n, n_nonzero, float(n_pos), p_value, effect, median, n_pos, n_neg, "binomial exact"
    )


def paired_test(baseline: npt.ArrayLike, candidate: npt.ArrayLike) -> PairedTest:
    """Wilcoxon signed-rank test of ``candidate - baseline``, with the sign test as fallback.

    Zero differences are dropped first (Wilcoxon's ``zero_method="wilcox"``; the sign test
    drops them too). With fewer than ``MIN_WILCOXON_PAIRS`` non-zero differences, or when
    scipy raises or returns no p-value, the exact binomial sign test answers instead. The
    Wilcoxon p-value is exact up to ``MAX_EXACT_PAIRS`` differences without tied magnitudes,
    with tied magnitudes up to ``MAX_EXACT_PAIRS`` the exact conditional distribution given the
    average ranks (``EXACT_TIES_METHOD``); above it the normal approximation with tie
    correction and continuity correction.

    Example:
        >>> paired_test([0.0] * 10, [1.5, -0.5, 2, 3, 4, -2.5, 5, 6, 7, 8]).p_value
        0.01953125

    Raises:
        ValueError: the samples differ in length or a value is not finite.
    """
    base = _vector(baseline, "baseline")
    cand = _vector(candidate, "candidate")
    if base.size != cand.size:
        raise ValueError(f"paired samples need one length, got {base.size} and {cand.size}")
    diff = cand - base
    n = int(diff.size)
    median = float(np.median(diff)) if n else math.nan
    nonzero = diff[diff != 0.0]
    n_pos = int(np.count_nonzero(nonzero > 0.0))
    n_neg = int(nonzero.size) - n_pos
    if nonzero.size == 0:
        return PairedTest("none", n, 0, 0.0, 1.0, 0.0, median, 0, 0, "")
    if nonzero.size < MIN_WILCOXON_PAIRS:
        return _sign_test(n, n_pos, n_neg, median)
    magnitude = np.abs(nonzero)
    ranks = stats.rankdata(magnitude, method="average")
    r_plus = float(ranks[nonzero > 0.0].sum())
    r_minus = float(ranks.sum()) - r_plus
    tied = np.unique(magnitude).size < magnitude.size
    if nonzero.size <= MAX_EXACT_PAIRS and tied:
        # scipy's exact table assumes untied ranks; the exact conditional distribution
        # given these average ranks (engines/signed_rank.py) replaces the normal approximation.
        p_value, p_method = exact_p_value(ranks, r_plus), EXACT_TIES_METHOD
    else:
        p_method = "exact" if nonzero.size <= MAX_EXACT_PAIRS else "asymptotic"
        try:
            result = stats.wilcoxon(
                nonzero,
                zero_method="wilcox",
                correction=True,
                alternative="two-sided",
                method=p_method,
            )
            p_value = float(result.pvalue)
        except ValueError:
            return _sign_test(n, n_pos, n_neg, median)
        if not math.isfinite(p_value):
            return _sign_test(n, n_pos, n_neg, median)
    effect = (r_plus - r_minus) / (r_plus + r_minus)
    return PairedTest(
        "wilcoxon",
        n,
        int(nonzero.size),
        min(r_plus, r_minus),
        p_value,
        effect,
        median,
        n_pos,
        n_neg,
        p_method,
    )
