"""The calibrated judge's pieces: Holm, the share rules, the sign-flip null, exact Wilcoxon."""

import itertools
import math

import numpy as np
import pytest
from scipy import stats

from costsim_analytics.engines import statistics as st
from costsim_analytics.engines.canary import judge as jd
from costsim_analytics.engines.canary import permutation as perm
from costsim_analytics.engines.reports import RuleDecision
from costsim_analytics.engines.signed_rank import exact_p_value, null_counts

QUANTILE = perm.Binning("quantile", 10, "laplace")


def test_holm_rejects_step_down_and_stops_at_the_first_failure():
    rejected, levels = jd.holm_levels([0.004, 0.02, 0.001], 0.03)
    assert levels == [0.015, 0.03, 0.01]
    assert rejected == [True, True, True]
    # 0.02 > 0.015 stops the procedure: 0.009 would pass alone at 0.03 but is after it.
    rejected, _ = jd.holm_levels([0.001, 0.02, 0.025], 0.03)
    assert rejected == [True, False, False]


def test_holm_controls_the_family_wise_rate_under_independent_nulls():
    rng = np.random.default_rng(5)
    p = rng.random((20_000, 3))
    any_rejected = sum(any(jd.holm_levels(list(row), 0.05)[0]) for row in p)
    # Exactly 1 - (1 - 0.05/3)^3 = 0.0492 for three independent uniform p-values.
    assert abs(any_rejected / 20_000 - 0.0492) < 0.006


def test_upper_bound_is_clopper_pearson_and_samples_to_pass_is_its_inverse():
    assert jd.upper_bound(0, 59, 0.95) == pytest.approx(1 - 0.05 ** (1 / 59))
    assert jd.upper_bound(5, 100, 0.95) == pytest.approx(stats.beta.ppf(0.95, 6, 95))
    assert jd.upper_bound(30, 30, 0.95) == 1.0
    need = jd.samples_to_pass(0.05, 0.95)
    assert need is not None
    assert jd.upper_bound(0, need, 0.95) <= 0.05 < jd.upper_bound(0, need - 1, 0.95)
    assert jd.samples_to_pass(0.0, 0.95) is None and jd.samples_to_pass(1.0, 0.95) == 1


def test_samples_to_pass_a_vanishing_limit_does_not_divide_by_zero():
    # 1 - 1e-17 is exactly 1.0: log(1 - threshold) was 0 and RunCanary ended INTERNAL.
    need = jd.samples_to_pass(1e-17, 0.99)
    assert need is not None and need == pytest.approx(math.log(0.01) / -1e-17)
    assert jd.upper_bound(0, need, 0.99) <= 1e-17
    assert jd.samples_to_pass(5e-324, 0.99) is None  # no float holds the count


@pytest.mark.parametrize(
    ("count", "decision"),
    [(2, "pass"), (5, "inconclusive"), (10, "inconclusive"), (11, "inconclusive"), (13, "fail")],
)
def test_share_rule_decisions_at_n_100(count, decision):
    rule = jd.share_rule("major_drift", "major_drift_share", count, 100, 0.10, 0.95)
    assert rule.p_value == pytest.approx(stats.binom.sf(count - 1, 100, 0.05))
    [result] = jd.decide([rule], jd.JUDGES["calibrated"], 0.01 / 3)
    assert result.decision == decision


def test_legacy_judge_decides_on_point_estimates_only():
    rule = jd.share_rule("major_drift", "major_drift_share", 11, 100, 0.10, 0.95)
    assert jd.decide([rule], jd.JUDGES["legacy"], 0.01)[0].decision == "fail"
    rule = jd.share_rule("major_drift", "major_drift_share", 10, 100, 0.10, 0.95)
    assert jd.decide([rule], jd.JUDGES["legacy"], 0.01)[0].decision == "pass"


def test_overall_fail_beats_inconclusive_beats_pass():
    def result(decision):
        return RuleDecision("r", "m", 0.0, 1.0, decision)

    assert jd.overall([result("pass"), result("inconclusive"), result("fail")]) == "fail"
    assert jd.overall([result("pass"), result("inconclusive")]) == "inconclusive"
    assert jd.overall([result("pass"), result("pass")]) == "pass"


def test_permutation_null_of_identical_models_is_degenerate():
    v = np.arange(1.0, 201.0)
    null = perm.permutation_test(v, v, QUANTILE, permutations=500, seed=1)
    assert (null.kl, null.p_value, null.changing_pairs) == (0.0, 1.0, 0)


def test_permutation_test_detects_a_shift_and_is_seeded():
    rng = np.random.default_rng(2)
    v1 = rng.lognormal(3.0, 0.3, 300)
    v2 = v1 * 1.3
    a = perm.permutation_test(v1, v2, QUANTILE, permutations=999, seed=4)
    b = perm.permutation_test(v1, v2, QUANTILE, permutations=999, seed=4)
    assert a == b
    assert a.p_value == 1 / 1000  # no swap pattern comes close to all pairs moving up
    assert a.kl == pytest.approx(perm.binned(v1, v2, QUANTILE).kl)


def test_permutation_p_value_is_uniform_under_exchangeable_pairs():
    # Pairs whose two values are exchangeable: p <= 0.1 in about 10 % of samples.
    rng = np.random.default_rng(8)
    hits = 0
    for _ in range(300):
        x = rng.lognormal(3.0, 0.5, (2, 60))
        hits += perm.permutation_test(x[0], x[1], QUANTILE, permutations=199, seed=0).p_value <= 0.1
    assert 0.06 < hits / 300 < 0.14


def test_chunking_does_not_change_the_null(monkeypatch):
    rng = np.random.default_rng(3)
    v1 = rng.lognormal(3.0, 0.5, 200)
    v2 = v1 * rng.uniform(0.9, 1.1, 200)
    whole = perm.permutation_test(v1, v2, QUANTILE, permutations=300, seed=9)
    monkeypatch.setattr(perm, "CHUNK_CELLS", 1000)
    assert perm.permutation_test(v1, v2, QUANTILE, permutations=300, seed=9) == whole


def test_quantile_bins_do_not_let_one_extreme_value_hide_a_shift():
    # The case: +50 % on every plan, plus one 1,000,000-cent plan priced the same.
    rng = np.random.default_rng(0)
    v1 = np.append(rng.integers(800, 900, 99).astype(float), 1e6)
    v2 = np.append(np.round(v1[:99] * 1.5), 1e6)
    assert st.divergence(v1, v2).kl == 0.0  # equal-width: 99 of 100 values in the first bin
    assert perm.binned(v1, v2, QUANTILE).kl > 2.0


def test_laplace_smoothing_bounds_an_empty_bin_where_epsilon_decides():
    base = np.array([1.0] * 10 + [5.0] * 10)
    cand = np.array([1.0] * 20)
    kls = [perm.binned(base, cand, perm.Binning("equal-width", 2, "epsilon", epsilon=e)).kl
           for e in (1e-3, 1e-6, 1e-9)]  # fmt: skip
    # The 2.8, 6.2, 9.7 pattern: half the mass in a bin the candidate leaves empty
    # costs about ln(1/eps) / 2, so the threshold decision is the epsilon's, not the data's.
    assert [round(k, 1) for k in kls] == [2.8, 6.2, 9.7]
    laplace = perm.binned(base, cand, perm.Binning("equal-width", 2, "laplace")).kl
    # Half a count per bin: p = (10.5, 10.5) / 21, q = (20.5, 0.5) / 21, whatever epsilon says.
    expected = 0.5 * math.log(0.5 / (20.5 / 21)) + 0.5 * math.log(0.5 / (0.5 / 21))
    assert laplace == pytest.approx(expected)


@pytest.mark.parametrize("method", perm.BIN_METHODS)
def test_every_binning_keeps_all_values_and_agrees_on_identical_samples(method):
    rng = np.random.default_rng(1)
    v = rng.pareto(1.2, 500) * 10
    d = perm.binned(v, v, perm.Binning(method, 10, "laplace"))
    assert (d.kl, d.js) == (0.0, 0.0) and sum(d.baseline_counts) == 500


def test_exact_wilcoxon_with_ties_matches_full_enumeration():
    d = np.array([1, 1, 2, 2, 2, 3, -1, 4, 4, 5, -2, 6, 6, -3], dtype=float)
    ranks = stats.rankdata(np.abs(d))
    r_plus = float(ranks[d > 0].sum())
    patterns = np.array(list(itertools.product([0, 1], repeat=d.size)), dtype=float)
    null = patterns @ ranks
    expected = min(1.0, 2 * min(np.mean(null <= r_plus), np.mean(null >= r_plus)))
    test = st.paired_test(np.zeros(d.size), d)
    assert test.p_value_method == "exact (ties)"
    assert test.p_value == pytest.approx(expected)
    asymptotic = stats.wilcoxon(d, method="asymptotic", correction=True).pvalue
    assert not math.isclose(test.p_value, asymptotic, rel_tol=0.05)


def test_exact_wilcoxon_without_ties_is_scipys_table():
    rng = np.random.default_rng(4)
    d = rng.normal(0.4, 1.0, 25)
    ranks = stats.rankdata(np.abs(d))
    assert exact_p_value(ranks, float(ranks[d > 0].sum())) == pytest.approx(
        stats.wilcoxon(d, method="exact").pvalue, rel=1e-12
    )
    assert null_counts(ranks).sum() == 2.0**25


def test_null_counts_refuses_ranks_that_are_not_half_integers():
    with pytest.raises(ValueError, match="multiples"):
        null_counts([1.0, 2.3])
