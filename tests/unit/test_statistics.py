import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as scipy_stats

from costsim_analytics.engines import statistics as stats_module
from costsim_analytics.engines.statistics import (
    MAJOR_DRIFT,
    MATCH,
    MINOR_DRIFT,
    MISMATCH,
    ORDER_STATISTICS_METHOD,
    RESAMPLING_METHOD,
    VERDICT_NAMES,
    bin_count,
    bootstrap_ci,
    bootstrap_replicates,
    classify,
    divergence,
    drift,
    interpolate,
    order_statistic_replicates,
    outliers,
    paired_test,
    percentile,
    percentile_rank,
)

LN2 = math.log(2.0)
cents = st.floats(min_value=0.0, max_value=1e6, allow_nan=False, allow_infinity=False)
signed = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)
scores = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)


def reference_drift(v1, v2, f1, f2):
    """The predecessor's per-sample Python, as docs/domain.md states it."""
    pct = abs(v2 - v1) / max(v1, 1) if v1 != 0 else 0.0
    score = 0.6 * min(pct, 1.0) + 0.4 * (1 if f1 != f2 else 0)
    if score <= 0.05:
        return score, MATCH
    if score <= 0.15:
        return score, MINOR_DRIFT
    if score <= 0.30:
        return score, MAJOR_DRIFT
    return score, MISMATCH


# --- drift and verdicts ------------------------------------------------------------------------


def test_verdict_names_follow_the_codes():
    assert [VERDICT_NAMES[c] for c in (MATCH, MINOR_DRIFT, MAJOR_DRIFT, MISMATCH)] == [
        "MATCH",
        "MINOR_DRIFT",
        "MAJOR_DRIFT",
        "MISMATCH",
    ]


@pytest.mark.parametrize(
    ("score", "verdict"),
    [
        (0.0, MATCH),
        (0.05, MATCH),
        (0.0500001, MINOR_DRIFT),
        (0.15, MINOR_DRIFT),
        (0.1500001, MAJOR_DRIFT),
        (0.30, MAJOR_DRIFT),
        (0.3000001, MISMATCH),
        (0.4, MISMATCH),
        (1.0, MISMATCH),
    ],
)
def test_classify_band_edges(score, verdict):
    result = classify([score])
    assert result.dtype == np.int8
    assert result.tolist() == [verdict]


def test_drift_hand_checked_samples():
    v1 = [100.0, 100.0, 100.0, 100.0, 100.0, 0.0, 0.5, 100.0, 100.0, 100.0]
    v2 = [105.0, 125.0, 150.0, 151.0, 300.0, 50.0, 1.0, 100.0, 300.0, 100.0]
    f1 = [True] * 10
    f2 = [True] * 7 + [False, False, True]
    d = drift(v1, v2, f1, f2)
    assert d.cost_delta.tolist() == [5.0, 25.0, 50.0, 51.0, 200.0, 50.0, 0.5, 0.0, 200.0, 0.0]
    # v1 == 0: the percentage is 0 by the domain rule; v1 = 0.5 divides by max(0.5, 1) = 1.
    assert d.cost_delta_pct.tolist() == [0.05, 0.25, 0.5, 0.51, 2.0, 0.0, 0.5, 0.0, 2.0, 0.0]
    assert d.drift_score.tolist() == pytest.approx([0.03, 0.15, 0.3, 0.306, 0.6, 0, 0.3, 0.4, 1, 0])
    assert [VERDICT_NAMES[v] for v in d.verdict] == [
        "MATCH",
        "MINOR_DRIFT",  # 0.6 * 0.25 is exactly 0.15: the edge belongs to the lower band
        "MAJOR_DRIFT",  # 0.6 * 0.5 is exactly 0.30
        "MISMATCH",
        "MISMATCH",  # the percentage saturates at 1
        "MATCH",  # v1 == 0
        "MAJOR_DRIFT",
        "MISMATCH",  # a feasibility flip alone scores 0.4, which is above 0.30
        "MISMATCH",  # saturated cost and a flip: 1.0
        "MATCH",
    ]
    assert d.drift_score[1] == 0.15
    assert d.drift_score[2] == 0.30


def test_feasibility_flip_alone_is_major_drift_but_not_an_outlier():
    d = drift([10.0], [10.0], [True], [False])
    assert d.drift_score.tolist() == [0.4]
    assert d.verdict[0] >= MAJOR_DRIFT  # counted among the report's major drift samples
    assert not outliers(d.drift_score, 0.5)[0]


def test_drift_of_no_samples_is_empty():
    d = drift([], [], [], [])
    assert d.verdict.size == d.drift_score.size == 0


def test_drift_rejects_ragged_and_non_finite_input():
    with pytest.raises(ValueError, match="one length"):
        drift([1.0, 2.0], [1.0], [True, True], [True, True])
    with pytest.raises(ValueError, match="finite"):
        drift([math.nan], [1.0], [True], [True])
    with pytest.raises(ValueError, match="one-dimensional"):
        drift([[1.0]], [[1.0]], [[True]], [[True]])


def test_outliers_are_strictly_above_the_threshold():
    assert outliers([0.49, 0.5, 0.5000001, 1.0], 0.5).tolist() == [False, False, True, True]


@given(st.lists(st.tuples(cents, cents, st.booleans(), st.booleans()), max_size=60))
def test_drift_is_bit_identical_to_the_per_sample_reference(rows):
    v1, v2, f1, f2 = (list(col) for col in zip(*rows, strict=True)) if rows else ([],) * 4
    d = drift(v1, v2, f1, f2)
    expected = [reference_drift(*row) for row in rows]
    assert d.drift_score.tolist() == [score for score, _ in expected]
    assert d.verdict.tolist() == [verdict for _, verdict in expected]


@given(st.lists(scores, max_size=200))
def test_verdict_counts_sum_to_the_total(values):
    counts = np.bincount(classify(values), minlength=4)
    assert counts.size == 4
    assert int(counts.sum()) == len(values)


@given(st.lists(scores, min_size=1, max_size=200))
def test_verdict_is_monotone_in_drift_score(values):
    ordered = np.sort(np.asarray(values))
    assert np.all(np.diff(classify(ordered).astype(int)) >= 0)


# --- percentile --------------------------------------------------------------------------------


def test_hand_checked_percentiles():
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile([1.0, 2.0, 3.0, 4.0], 90) == pytest.approx(3.7)
    assert percentile([0.0, 10.0], 90) == 9.0
    assert percentile([10.0, 0.0], 90) == 9.0  # unsorted input is fine
    assert percentile(list(range(11)), 90) == 9.0  # h = 0.9 * 10 lands on a rank
    assert percentile([5.0], 90) == 5.0
    assert percentile([3.0, 1.0, 2.0], 0) == 1.0
    assert percentile([3.0, 1.0, 2.0], 100) == 3.0


def test_percentile_of_nothing_is_nan_and_q_is_checked():
    assert math.isnan(percentile([], 50))
    with pytest.raises(ValueError, match=r"\[0, 100\]"):
        percentile([1.0], 101)
    with pytest.raises(ValueError, match=r"\[0, 100\]"):
        percentile([1.0], math.nan)


@given(st.lists(signed, min_size=1, max_size=80), st.floats(min_value=0.0, max_value=100.0))
def test_percentile_matches_numpy_and_the_drift_stats_definition(values, q):
    got = percentile(values, q)
    assert got == np.percentile(values, q, method="linear")
    lower, weight = percentile_rank(q, len(values))
    ordered = sorted(values)
    by_rank = interpolate(ordered[lower], ordered[min(lower + 1, len(values) - 1)], weight)
    assert got == pytest.approx(by_rank, abs=1e-6)


# --- divergence --------------------------------------------------------------------------------


def test_equal_samples_have_exactly_zero_divergence():
    sample = [0.0, 5.0, 5.0, 10.0, 12.0, 40.0, 41.0, 100.0]
    result = divergence(sample, list(reversed(sample)))
    assert result.kl == 0.0
    assert result.js == 0.0
    assert result.baseline_counts == result.candidate_counts
    # Same proportions from samples of different sizes are equal distributions too.
    assert divergence([1.0, 2.0], [1.0, 1.0, 2.0, 2.0]).kl == 0.0


def test_disjoint_samples_have_large_kl_and_js_of_ln2():
    low = [1.0, 2.0, 3.0] * 10
    high = [1000.0, 1001.0, 1002.0] * 10
    result = divergence(low, high)
    assert result.kl > 5.0
    assert result.js == pytest.approx(LN2)
    assert result.js <= LN2


def test_hand_checked_kl_and_js():
    result = divergence([0.0, 0.0, 1.0, 1.0], [0.0, 1.0, 1.0, 1.0], bins=2)
    assert result.edges == (0.0, 0.5, 1.0)
    assert result.baseline_counts == (2, 2)
    assert result.candidate_counts == (1, 3)
    # KL((1/2, 1/2) || (1/4, 3/4)) = 1/2 ln 2 + 1/2 ln(2/3) = 1/2 ln(4/3)
    assert result.kl == pytest.approx(0.5 * math.log(4 / 3), abs=1e-5)
    m = (0.375, 0.625)
    kl_pm = 0.5 * math.log(0.5 / m[0]) + 0.5 * math.log(0.5 / m[1])
    kl_qm = 0.25 * math.log(0.25 / m[0]) + 0.75 * math.log(0.75 / m[1])
    assert result.js == pytest.approx(0.5 * kl_pm + 0.5 * kl_qm, rel=1e-12)


def test_js_is_symmetric_and_kl_is_not():
    a = [0.0, 0.0, 0.0, 1.0, 2.0, 3.0, 9.0]
    b = [0.0, 4.0, 5.0, 6.0, 9.0, 9.0, 9.0]
    ab, ba = divergence(a, b, bins=5), divergence(b, a, bins=5)
    assert ab.js == pytest.approx(ba.js, rel=1e-12)
    assert ab.kl != pytest.approx(ba.kl)


def test_zero_range_does_not_crash():
    result = divergence([7.0] * 5, [7.0] * 3)
    assert (result.kl, result.js, result.bins) == (0.0, 0.0, 1)
    assert result.edges == (6.5, 7.5)
    assert divergence([7.0] * 5, [7.0] * 3, bins=4).edges == (6.5, 6.75, 7.0, 7.25, 7.5)


def test_empty_sample_gives_nan_and_no_bins():
    result = divergence([], [1.0])
    assert math.isnan(result.kl)
    assert math.isnan(result.js)
    assert (result.bins, result.edges) == (0, ())


def test_divergence_rejects_bad_parameters():
    with pytest.raises(ValueError, match="bins"):
        divergence([1.0], [2.0], bins=0)
    with pytest.raises(ValueError, match="epsilon"):
        divergence([1.0], [2.0], epsilon=0.0)


def test_bin_rule_freedman_diaconis_sturges_and_cap():
    # 0..7 and 100: IQR = 6 - 2 = 4, width = 8 / 9^(1/3) = 3.846, range 100 -> 26.001 -> 27.
    pooled = np.array([0.0, 1, 2, 3, 4, 5, 6, 7, 100])
    assert bin_count(pooled, smaller_sample=1000) == 27
    assert bin_count(pooled, smaller_sample=100) == 10  # capped at sqrt(100)
    # IQR 0 (most costs are 0 cents): Sturges, ceil(log2 100) + 1 = 8.
    mostly_zero = np.array([0.0] * 90 + list(range(1, 11)))
    assert bin_count(mostly_zero, smaller_sample=100) == 8
    assert bin_count(np.array([3.0, 3.0]), smaller_sample=1) == 1
    # The default rule goes into the result, with edges over the pooled range. Pooled: 200
    # values, q25 = 49.75, q75 = 99.25, width = 2 * 49.5 / 200^(1/3) = 16.93, 149 / 16.93 -> 9.
    result = divergence(list(range(100)), list(range(50, 150)))
    assert result.bins == len(result.edges) - 1 == 9
    assert (result.edges[0], result.edges[-1]) == (0.0, 149.0)


@settings(deadline=None)
@given(st.lists(cents, min_size=1, max_size=60), st.lists(cents, min_size=1, max_size=60))
def test_divergence_bounds(baseline, candidate):
    result = divergence(baseline, candidate)
    assert result.kl >= 0.0
    assert 0.0 <= result.js <= LN2
    assert sum(result.baseline_counts) == len(baseline)
    assert sum(result.candidate_counts) == len(candidate)
    assert 1 <= result.bins <= 100
    assert divergence(candidate, baseline, bins=result.bins).js == pytest.approx(result.js)


# --- paired test -------------------------------------------------------------------------------

# Ten non-zero differences with distinct magnitudes. Ranks of |d|: 0.5 -> 1, 1.5 -> 2, 2 -> 3,
# 2.5 -> 4, 3 -> 5, 4 -> 6, 5 -> 7, 6 -> 8, 7 -> 9, 8 -> 10. The negative ones are -0.5 and
# -2.5, so R- = 1 + 4 = 5 and R+ = 55 - 5 = 50; W = min = 5. Under H0 every one of the 2^10
# sign patterns is equally likely; the rank subsets with sum <= 5 are {}, {1}, {2}, {3}, {1,2},
# {4}, {1,3}, {5}, {1,4}, {2,3}: 10 of 1024, so the two-sided p-value is 20/1024.
HAND_DIFFS = [1.5, -0.5, 2.0, 3.0, 4.0, -2.5, 5.0, 6.0, 7.0, 8.0]


def test_wilcoxon_hand_checked_exact_example():
    baseline = [100.0] * 10
    candidate = [100.0 + d for d in HAND_DIFFS]
    result = paired_test(baseline, candidate)
    assert result.method == "wilcoxon"
    assert result.p_value_method == "exact"
    assert (result.n, result.n_nonzero, result.n_positive, result.n_negative) == (10, 10, 8, 2)
    assert result.statistic == 5.0
    assert result.p_value == pytest.approx(20 / 1024)
    assert result.effect_size == pytest.approx((50 - 5) / 55)  # candidate higher: positive
    assert result.median_difference == 3.5
    flipped = paired_test(candidate, baseline)
    assert flipped.p_value == result.p_value
    assert flipped.effect_size == pytest.approx(-result.effect_size)


def test_wilcoxon_drops_zero_differences():
    result = paired_test([0.0] * 12, [*HAND_DIFFS, 0.0, 0.0])
    assert (result.n, result.n_nonzero) == (12, 10)
    assert result.statistic == 5.0
    assert result.p_value == pytest.approx(20 / 1024)


def test_wilcoxon_with_ties_and_small_n_is_exact_given_the_ties():
    diffs = [1.0, 1.0, 2.0, 2.0, 2.0, -3.0, 4.0, 5.0, 6.0, -7.0, 8.0, 9.0]
    # Average ranks: 1.5, 1.5, 4, 4, 4, 6, ..., 12; R- = 6 + 10 = 16, R+ = 78 - 16 = 62.
    ranks = np.array([1.5, 1.5, 4, 4, 4, 6, 7, 8, 9, 10, 11, 12])
    signs = np.array(list(itertools.product([0, 1], repeat=12)), dtype=float)
    null = signs @ ranks  # R+ under each of the 4,096 sign patterns, ties kept
    exact = 2 * min(np.mean(null <= 62), np.mean(null >= 62))
    result = paired_test([0.0] * 12, diffs)
    assert (result.method, result.p_value_method) == ("wilcoxon", "exact (ties)")
    assert result.statistic == 16.0
    assert result.p_value == pytest.approx(exact, rel=1e-12)
    assert result.effect_size == pytest.approx(46 / 78)
    # The normal approximation it replaces (mean 39, variance 161.875) says 0.0770, not 0.0728.
    z = (62 - 39 - 0.5) / math.sqrt(161.875)
    assert not math.isclose(math.erfc(z / math.sqrt(2)), exact, rel_tol=0.05)


def test_wilcoxon_with_ties_above_fifty_uses_the_corrected_normal_approximation():
    diffs = np.array([1.0, 1.0, 2.0, 2.0, 2.0, -3.0, 4.0, 5.0, 6.0, -7.0, 8.0, 9.0] * 5)
    ranks = scipy_stats.rankdata(np.abs(diffs))
    r_plus = ranks[diffs > 0].sum()
    n = diffs.size
    _, ties = np.unique(np.abs(diffs), return_counts=True)
    variance = n * (n + 1) * (2 * n + 1) / 24 - ((ties**3 - ties).sum()) / 48
    z = (r_plus - n * (n + 1) / 4 - 0.5) / math.sqrt(variance)
    result = paired_test([0.0] * n, diffs)
    assert result.p_value_method == "asymptotic"
    assert result.p_value == pytest.approx(math.erfc(z / math.sqrt(2)), rel=1e-9)


def test_sign_test_below_ten_nonzero_differences():
    # Hollander & Wolfe's Hamilton depression scale pairs (first visit x, second visit y).
    x = [1.83, 0.50, 1.62, 2.48, 1.68, 1.88, 1.55, 3.06, 1.30]
    y = [0.878, 0.647, 0.598, 2.05, 1.06, 1.29, 1.06, 3.14, 1.29]
    result = paired_test(x, y)
    assert result.method == "sign"
    assert result.p_value_method == "binomial exact"
    assert (result.n_nonzero, result.n_positive, result.n_negative) == (9, 2, 7)
    assert result.statistic == 2.0
    # 2 * P(Bin(9, 1/2) <= 2) = 2 * (1 + 9 + 36) / 512
    assert result.p_value == pytest.approx(92 / 512)
    assert result.effect_size == pytest.approx((2 - 7) / 9)


def test_sign_test_when_scipy_refuses(monkeypatch):
    def refuse(*args, **kwargs):
        raise ValueError("no")

    monkeypatch.setattr(stats_module.stats, "wilcoxon", refuse)  # type: ignore[attr-defined]
    result = paired_test([0.0] * 10, HAND_DIFFS)
    assert result.method == "sign"
    assert result.p_value == pytest.approx(2 * (1 + 10 + 45) / 1024)  # 8 up, 2 down


def test_no_nonzero_difference_means_no_test():
    result = paired_test([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])
    assert (result.method, result.p_value, result.effect_size, result.n) == ("none", 1.0, 0.0, 3)
    empty = paired_test([], [])
    assert empty.method == "none"
    assert math.isnan(empty.median_difference)


def test_paired_test_needs_pairs():
    with pytest.raises(ValueError, match="one length"):
        paired_test([1.0, 2.0], [1.0])


@settings(deadline=None)
@given(st.lists(st.tuples(cents, cents), max_size=80))
def test_paired_test_ranges(pairs):
    baseline = [b for b, _ in pairs]
    candidate = [c for _, c in pairs]
    result = paired_test(baseline, candidate)
    assert 0.0 <= result.p_value <= 1.0
    assert -1.0 <= result.effect_size <= 1.0
    assert result.n_positive + result.n_negative == result.n_nonzero <= result.n


# --- bootstrap ---------------------------------------------------------------------------------


def naive_replicates(values, q, resamples, rng):
    """The textbook bootstrap: a (resamples x n) index matrix, a percentile per row."""
    indices = rng.integers(0, values.size, size=(resamples, values.size))
    return np.percentile(values[indices], q, axis=1, method="linear")


def exact_distribution(values, q):
    """Atoms and probabilities of a resample's percentile, over all n**n equally likely draws."""
    n = values.size
    indices = np.array(list(itertools.product(range(n), repeat=n)))
    atoms, counts = np.unique(
        rounded(np.percentile(values[indices], q, axis=1, method="linear")), return_counts=True
    )
    return atoms, counts / indices.shape[0]


def rounded(replicates):
    # Both methods interpolate with numpy's formula, but an atom one ulp off would look like a
    # different value to KS; the sample values are far apart on this scale.
    return np.round(replicates, 9)


def exact_support(values, q):
    """Every percentile a resample of ``values`` can have: lerp of two sorted values, i <= j."""
    x = np.sort(values)
    h = (x.size - 1) * q / 100.0
    w = h - math.floor(h)
    i, j = np.triu_indices(x.size)
    return rounded(np.percentile(np.stack([x[i], x[j]], axis=1), w * 100.0, axis=1))


def rng(seed):
    return np.random.default_rng(seed)


def sample(n):
    return np.random.default_rng(100 + n).lognormal(2.0, 1.0, n)


class RecordingRng:
    """A Generator that records the name and size of every draw."""

    def __init__(self, seed):
        self._rng = np.random.default_rng(seed)
        self.draws = []

    def __getattr__(self, name):
        method = getattr(self._rng, name)

        def record(*args, **kwargs):
            out = method(*args, **kwargs)
            self.draws.append((name, np.size(out)))
            return out

        return record


@pytest.mark.parametrize("n", [5, 6, 11, 40])
@pytest.mark.parametrize("statistic", ["median", "p90"])
def test_order_statistics_match_naive_resampling(n, statistic):
    # n = 5: the median lands on a rank (w = 0) and p90 between ranks 3 and 4 (w = 0.6);
    # n = 6: both between ranks; n = 11: both on a rank; n = 40: both between ranks.
    values = sample(n)
    q = {"median": 50.0, "p90": 90.0}[statistic]
    fast = bootstrap_replicates(values, statistic, 20_000, np.random.default_rng(1))
    naive = naive_replicates(values, q, 20_000, np.random.default_rng(2))
    assert scipy_stats.ks_2samp(rounded(fast), rounded(naive)).pvalue > 1e-3
    assert fast.mean() == pytest.approx(naive.mean(), rel=0.02)
    assert fast.std() == pytest.approx(naive.std(), rel=0.05)
    # Same support: every value the fast method gives, some resample can give.
    support = set(rounded(fast))
    assert len(support) > 1  # a spread of values (an empty set would pass the subset check)
    assert support <= set(exact_support(values, q))


@pytest.mark.parametrize(("n", "q"), [(3, 50.0), (4, 50.0), (5, 50.0), (5, 90.0), (6, 90.0)])
def test_order_statistics_match_the_exact_distribution(n, q):
    # Enumerate all n**n index draws for the exact law; chi-square goodness of fit of 20,000
    # replicates, with the cells expected to hold fewer than 5 pooled into one.
    atoms, probabilities = exact_distribution(sample(n), q)
    replicates = rounded(order_statistic_replicates(np.sort(sample(n)), q, 20_000, rng(3)))
    assert replicates.size == 20_000 and len(set(replicates)) > 1
    assert set(replicates) <= set(atoms)
    observed = np.array([np.count_nonzero(replicates == a) for a in atoms])
    expected = probabilities * replicates.size
    small = expected < 5.0
    if small.any():
        observed = np.append(observed[~small], observed[small].sum())
        expected = np.append(expected[~small], expected[small].sum())
    assert scipy_stats.chisquare(observed, expected).pvalue > 1e-3


def test_median_of_two_values_by_hand():
    # Resamples of (x0, x1): (x0, x0), (x0, x1), (x1, x0), (x1, x1), each with probability 1/4,
    # so the median is x0 w.p. 1/4, (x0 + x1) / 2 w.p. 1/2 and x1 w.p. 1/4.
    replicates = bootstrap_replicates(np.array([10.0, 30.0]), "median", 100_000, rng(4))
    assert set(replicates.tolist()) == {10.0, 20.0, 30.0}
    frequencies = [np.mean(replicates == v) for v in (10.0, 20.0, 30.0)]
    assert frequencies == pytest.approx([0.25, 0.5, 0.25], abs=0.01)  # 6 standard errors


def test_order_statistics_draw_resamples_values_not_resamples_times_n():
    values = sample(10_001)
    between = RecordingRng(5)  # p90: h = 9000, on a rank; the median too
    bootstrap_replicates(values, "p90", 2000, between)  # type: ignore[arg-type]  # a spy
    assert between.draws == [("beta", 2000)]
    values = sample(10_000)  # h = 4999.5 and 8999.1: two order statistics
    for statistic in ("median", "p90"):
        spy = RecordingRng(5)
        replicates = bootstrap_replicates(values, statistic, 2000, spy)  # type: ignore[arg-type]
        assert spy.draws == [("beta", 2000), ("beta", 2000)]
        assert replicates.shape == (2000,)


def test_bootstrap_of_a_million_values_is_fast():
    # The index-matrix bootstrap would draw 2 * 10**9 indices here (about a minute); the order
    # statistics draw 4000 numbers after one sort.
    values = np.random.default_rng(6).exponential(100.0, 1_000_000)
    ci = bootstrap_ci(values, "p90", resamples=2000, seed=1)
    assert ci.low <= ci.estimate <= ci.high
    true_p90 = 100.0 * math.log(10.0)
    assert ci.low < true_p90 < ci.high or abs(ci.estimate - true_p90) < 1.0
    assert ci.high - ci.low < 2.0


def test_bootstrap_is_deterministic_for_a_seed():
    values = np.random.default_rng(3).lognormal(3.0, 1.0, 500)
    first = bootstrap_ci(values, "median", seed=11)
    assert bootstrap_ci(values, "median", seed=11) == first
    assert bootstrap_ci(values, "median", seed=12) != first
    assert first.low <= first.estimate <= first.high
    assert first.estimate == percentile(values, 50)
    assert (first.level, first.resamples, first.seed) == (0.95, 2000, 11)
    assert first.method == ORDER_STATISTICS_METHOD == "percentile bootstrap (order statistics)"
    # The order of the input does not matter: the method reads the sorted values.
    assert bootstrap_ci(values[::-1], "median", seed=11) == first


def test_bootstrap_p90_and_mean():
    values = np.arange(1.0, 101.0)
    p90 = bootstrap_ci(values, "p90", resamples=500)
    assert p90.estimate == percentile(values, 90)
    assert p90.low <= p90.estimate <= p90.high
    assert p90.method == ORDER_STATISTICS_METHOD
    mean = bootstrap_ci(values, "mean", resamples=500)
    assert mean.estimate == pytest.approx(50.5)
    assert mean.low < 50.5 < mean.high
    assert mean.method == RESAMPLING_METHOD == "percentile bootstrap"


def test_bootstrap_interval_matches_the_naive_interval():
    values = np.random.default_rng(8).lognormal(3.0, 1.0, 300)
    for statistic, q in (("median", 50.0), ("p90", 90.0)):
        ci = bootstrap_ci(values, statistic, resamples=20_000, seed=1)
        naive = naive_replicates(values, q, 20_000, rng(2))
        low, high = np.percentile(naive, [2.5, 97.5])
        width = high - low
        assert ci.low == pytest.approx(low, abs=0.1 * width)
        assert ci.high == pytest.approx(high, abs=0.1 * width)


def test_bootstrap_is_narrower_with_more_data():
    rng = np.random.default_rng(5)
    small = bootstrap_ci(rng.normal(0.0, 1.0, 50), "median")
    large = bootstrap_ci(rng.normal(0.0, 1.0, 5000), "median")
    assert large.high - large.low < (small.high - small.low) / 3


def test_bootstrap_chunking_does_not_change_the_draws():
    values = np.random.default_rng(9).normal(size=37)
    one_go = bootstrap_replicates(values, "mean", 101, np.random.default_rng(1))
    chunked = bootstrap_replicates(
        values, "mean", 101, np.random.default_rng(1), chunk_elements=37 * 4
    )
    assert np.array_equal(one_go, chunked)


def test_bootstrap_of_the_mean_handles_a_large_sample_in_chunks():
    values = np.random.default_rng(2).exponential(100.0, 100_000)
    ci = bootstrap_ci(values, "mean", resamples=50)
    assert ci.low <= ci.estimate <= ci.high
    assert ci.high - ci.low < 3.0


def test_bootstrap_edge_cases():
    empty = bootstrap_ci([], "median")
    assert all(math.isnan(v) for v in (empty.estimate, empty.low, empty.high))
    for statistic in ("median", "p90", "mean"):
        single = bootstrap_ci([4.0], statistic)
        assert (single.estimate, single.low, single.high) == (4.0, 4.0, 4.0)
    constant = bootstrap_ci([7.0] * 25, "p90")
    assert (constant.estimate, constant.low, constant.high) == (7.0, 7.0, 7.0)
    with pytest.raises(ValueError, match="statistic"):
        bootstrap_ci([1.0], "p99")
    with pytest.raises(ValueError, match="level"):
        bootstrap_ci([1.0], "median", level=1.0)
    with pytest.raises(ValueError, match="resamples"):
        bootstrap_ci([1.0], "median", resamples=0)
    with pytest.raises(ValueError, match="seed"):
        bootstrap_ci([1.0], "median", seed=-1)
    with pytest.raises(ValueError, match="empty"):
        order_statistic_replicates(np.array([]), 50.0, 10, rng(0))
    with pytest.raises(ValueError, match=r"\[0, 100\]"):
        order_statistic_replicates(np.array([1.0]), 101.0, 10, rng(0))
    assert order_statistic_replicates(np.array([1.0, 2.0]), 100.0, 3, rng(0)).tolist() == [2.0] * 3


@settings(deadline=None)
@given(st.lists(signed, min_size=1, max_size=40), st.integers(min_value=0, max_value=2**32))
def test_median_interval_contains_the_estimate(values, seed):
    ci = bootstrap_ci(values, "median", resamples=400, seed=seed)
    assert ci.low <= ci.estimate <= ci.high


@settings(deadline=None)
@given(
    st.lists(signed, min_size=1, max_size=40),
    st.sampled_from(["median", "p90"]),
    st.integers(min_value=0, max_value=2**32),
)
def test_replicates_lie_within_the_sample_range(values, statistic, seed):
    replicates = bootstrap_replicates(np.array(values), statistic, 200, rng(seed))
    assert replicates.shape == (200,)
    assert np.all(replicates >= min(values))
    assert np.all(replicates <= max(values))
