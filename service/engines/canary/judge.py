"""Canary judges: the rules that turn a run's statistics into pass, fail or inconclusive.

Two judges, chosen by name (``CanaryConfig.judge``; docs/statistics.md, section 6):

- ``"calibrated"`` (the default). Each rule is a test with a p-value and a three-way
  decision; the rules' p-values share one false-alarm budget ``alpha`` by Holm's step-down
  procedure. KL is computed on pooled-quantile bins with Laplace smoothing and must be both
  above its threshold *and* significant under the within-pair sign-flip null
  (``engines/canary/permutation.py``). A share rule (outliers, major drift) fails when the share is
  above its limit and significantly above half of it (exact binomial test), and passes only
  when its one-sided Clopper-Pearson upper bound is within the limit. Anything between is
  ``inconclusive``, which is not a pass.
- ``"legacy"``: the predecessor's rule, kept for comparison: equal-width bins, a raw
  epsilon, every rule on its point estimate alone, no inconclusive verdict.

Example:
    >>> JUDGES["calibrated"].binning.method, JUDGES["legacy"].binning.method
    ('quantile', 'equal-width')
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

from costsim_analytics.engines.arrays import FloatArray
from costsim_analytics.engines.canary.permutation import Binning
from costsim_analytics.engines.reports import RuleDecision

PASS, FAIL, INCONCLUSIVE = "pass", "fail", "inconclusive"


@dataclass(frozen=True, slots=True)
class JudgeSpec:
    """A named decision rule: how KL is binned and whether the rules are inferential."""

    name: str
    binning: Binning
    calibrated: bool
    """Permutation-tested KL, binomial share tests, Holm, and an inconclusive verdict."""


JUDGES = {
    "calibrated": JudgeSpec("calibrated", Binning("quantile", 10, "laplace"), calibrated=True),
    "legacy": JudgeSpec("legacy", Binning("equal-width", None, "epsilon"), calibrated=False),
}
DEFAULT_JUDGE = "calibrated"
# A share rule's null hypothesis: the share is at most this fraction of its limit (the band
# below which a canary should pass; docs/statistics.md section 6).
ACCEPTABLE_FRACTION = 0.5


@dataclass(frozen=True, slots=True)
class RuleInput:
    """One rule's evidence before the decision; ``p_value`` None: not inferential."""

    rule: str
    metric: str
    observed: float
    threshold: float
    fires: bool
    """The point estimate is beyond the threshold (the legacy rule's whole decision)."""
    clear: bool
    """The evidence shows the rule is within its threshold."""
    p_value: float | None = None
    upper_bound: float | None = None


def holm_levels(p_values: Sequence[float], alpha: float) -> tuple[list[bool], list[float]]:
    """Holm's step-down procedure: which hypotheses are rejected, and each one's level.

    The smallest p-value is compared with ``alpha / m``, the next with ``alpha / (m - 1)``,
    and so on until one is not rejected; it and every larger p-value are not rejected. The
    family-wise error rate is at most ``alpha`` whatever the dependence (Holm 1979).

    Example:
        >>> holm_levels([0.001, 0.04, 0.03], 0.05)
        ([True, False, False], [0.016666666666666666, 0.05, 0.025])

    """
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    rejected, levels = [False] * m, [0.0] * m
    stopped = False
    for rank, i in enumerate(order):
        levels[i] = alpha / (m - rank)
        if not stopped and p_values[i] <= levels[i]:
            rejected[i] = True
        else:
            stopped = True
    return rejected, levels


def decide(inputs: Sequence[RuleInput], spec: JudgeSpec, alpha: float) -> list[RuleDecision]:
    """Each rule's decision under ``spec``; the p-values share ``alpha`` (Holm)."""
    if not spec.calibrated:
        return [
            RuleDecision(r.rule, r.metric, r.observed, r.threshold, FAIL if r.fires else PASS)
            for r in inputs
        ]
    tested = [r for r in inputs if r.p_value is not None]
    rejected, levels = holm_levels([float(r.p_value or 0.0) for r in tested], alpha)
    verdicts = {id(r): (ok, lv) for r, ok, lv in zip(tested, rejected, levels, strict=True)}
    results = []
    for r in inputs:
        significant, level = verdicts.get(id(r), (True, None))
        if r.fires and significant:
            decision = FAIL
        elif r.clear:
            decision = PASS
        else:
            decision = INCONCLUSIVE
        results.append(
            RuleDecision(
                r.rule, r.metric, r.observed, r.threshold, decision, r.p_value, level, r.upper_bound
            )
        )
    return results


def overall(results: Sequence[RuleDecision]) -> str:
    """``fail`` when any rule fails, ``pass`` when every rule passes, else ``inconclusive``."""
    decisions = {r.decision for r in results}
    if FAIL in decisions:
        return FAIL
    return INCONCLUSIVE if INCONCLUSIVE in decisions else PASS


def upper_bound(count: int, n: int, confidence: float) -> float:
    """One-sided Clopper-Pearson upper confidence bound of a binomial share.

    Example:
        >>> round(upper_bound(0, 59, 0.95), 4)
        0.0495

    """
    if count >= n:
        return 1.0
    return float(stats.beta.ppf(confidence, count + 1, n - count))


def samples_to_pass(threshold: float, confidence: float) -> int | None:
    """Fewest samples whose upper bound with no event at all is within ``threshold``.

    Below it a share rule cannot pass however clean the run. ``None`` for a zero limit, and
    for a limit so small that no float counts the samples it needs (below about 1e-308).

    Example:
        >>> samples_to_pass(0.05, 0.95), samples_to_pass(0.10, 0.95)
        (59, 29)
        >>> samples_to_pass(5e-324, 0.99) is None
        True

    """
    if threshold <= 0.0:
        return None
    if threshold >= 1.0:
        return 1
    # log1p, not log(1 - threshold): below 1.1e-16, 1 - threshold is exactly 1 and log of it 0.
    need = math.log(1.0 - confidence) / math.log1p(-threshold)
    return math.ceil(need) if math.isfinite(need) else None


def share_rule(
    rule: str, metric: str, count: int, n: int, threshold: float, confidence: float
) -> RuleInput:
    """A share rule's evidence: exact binomial test of ``share <= threshold / 2``, upper bound.

    ``fires``: the observed share is above ``threshold``; ``clear``: the one-sided upper
    bound at ``confidence`` is within it; ``p_value``: ``P(X >= count)`` for
    ``X ~ Binomial(n, ACCEPTABLE_FRACTION * threshold)``.
    """
    share = count / n
    null = ACCEPTABLE_FRACTION * threshold
    p_value = float(stats.binom.sf(count - 1, n, null)) if count > 0 else 1.0
    bound = upper_bound(count, n, confidence)
    return RuleInput(
        rule, metric, share, threshold, share > threshold, bound <= threshold, p_value, bound
    )


def median_rule(
    estimate: float,
    low: float,
    high: float,
    replicates: FloatArray,
    tolerance: float,
) -> RuleInput:
    """The median-relative-delta rule: fails when the median lies significantly beyond ±τ.

    ``p_value`` inverts the percentile interval: twice the bootstrap share of replicates on
    the near side of ``+tolerance`` (or ``-tolerance``), the smaller of the two, so the rule
    is significant at level ``a`` exactly when the ``1 - a`` percentile interval lies wholly
    beyond ±τ. ``fires`` when the interval ``[low, high]`` does; ``clear`` when it lies
    within ±τ.
    """
    above = float(np.mean(replicates <= tolerance))
    below = float(np.mean(replicates >= -tolerance))
    p_value = min(1.0, 2.0 * min(above, below))
    fires = low > tolerance or high < -tolerance
    clear = -tolerance <= low and high <= tolerance
    return RuleInput(
        "median_delta", "median_relative_delta", estimate, tolerance, fires, clear, p_value
    )
