"""The canary engine with stand-in models whose costs are read from the plan input."""

import json
from dataclasses import replace
from datetime import UTC, datetime

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from costsim_analytics.engines.canary.evaluation import (
    COMPARISONS_FILE,
    DIFFS_FILE,
    CanaryConfig,
    Sample,
    choose,
    evaluate,
    report_artifact,
    sample_artifacts,
)
from costsim_analytics.engines.canary.judge import JUDGES
from costsim_analytics.engines.cost_models import BatchEstimates, load_cost_model

NOW = datetime(2026, 11, 26, 6, 0, tzinfo=UTC)


class TableModel:
    """Cost = plan_input[key]; a plan input without the key is malformed."""

    version = "test"

    def __init__(self, name, key, feasible_key=None):
        self.name = name
        self.key = key
        self.feasible_key = feasible_key

    def estimate(self, plan_input):
        raise NotImplementedError

    def estimate_batch(self, plan_inputs):
        valid = np.array([self.key in p for p in plan_inputs], dtype=bool)
        cost = np.array([float(p.get(self.key, np.nan)) for p in plan_inputs])
        feasible = np.array(
            [bool(p.get(self.feasible_key, True)) if self.key in p else False for p in plan_inputs]
        )
        return BatchEstimates(
            cost_cents=cost,
            duration_ms=np.where(valid, 100.0, np.nan),
            feasible=feasible,
            cumulative_risk=np.where(valid, 0.1, np.nan),
            valid=valid,
            errors=tuple(None if v else "malformed" for v in valid),
        )


BASE = TableModel("base", "a")
CAND = TableModel("cand", "b", "b_feasible")


def samples(pairs):
    return [Sample(f"s{i}", {"a": a, "b": b}) for i, (a, b) in enumerate(pairs)]


DEFAULTS = CanaryConfig()


def run(sample_list, config=DEFAULTS, seed=0):
    return evaluate(
        sample_list,
        BASE,
        CAND,
        config,
        run_id="canary-test",
        timestamp=NOW,
        seed=seed,
        sample_source="explicit",
    )


def test_identical_costs_pass_with_exactly_zero_divergence():
    ev = run(samples([(c, c) for c in range(1, 101)]))
    r = ev.report
    assert (r.status, r.passed) == ("pass", True)
    assert r.kl_divergence == 0.0 and r.statistics.js_divergence == 0.0
    assert (r.total_samples, r.matching_samples, r.major_drift_samples) == (100, 100, 0)
    assert r.median_cost_diff == 0.0 and r.outlier_count == 0
    assert r.reasons == () and r.failure_reasons == ()
    assert r.statistics.paired_test.method == "none"


def test_predecessor_rules_fail_with_reasons_as_data():
    # 80 equal samples, 20 where the candidate costs 3x: 20 % major drift (> 10 %), and
    # drift_score 0.6 > 0.5 makes them outliers (20 % > 5 %).
    pairs = [(10, 10)] * 80 + [(10, 30)] * 20
    r = run(samples(pairs)).report
    assert (r.status, r.passed) == ("fail", False)
    codes = {reason.code: reason for reason in r.reasons}
    assert {"OUTLIERS_HIGH", "MAJOR_DRIFT_HIGH"} <= set(codes)
    major = codes["MAJOR_DRIFT_HIGH"]
    assert (major.metric, major.observed, major.threshold, major.comparator) == (
        "major_drift_share",
        0.2,
        0.1,
        ">",
    )
    assert major.message in r.failure_reasons
    assert r.major_drift_samples == 20 and r.outlier_count == 20
    assert r.matching_samples + r.minor_drift_samples + r.major_drift_samples == r.total_samples


def test_thresholds_are_overridable():
    pairs = [(10, 10)] * 80 + [(10, 30)] * 20
    lenient = CanaryConfig(drift_threshold=10, outlier_max_pct=0.5, major_drift_max_pct=0.5)
    assert run(samples(pairs), lenient).report.status == "pass"


LEGACY = CanaryConfig(judge=JUDGES["legacy"])


def test_feasibility_flip_alone_is_major_drift():
    # drift_score 0.4 is MISMATCH, which counts as major drift; 10 of 100 is not above 10 %.
    flips = [Sample(f"s{i}", {"a": 5, "b": 5, "b_feasible": i >= 10}) for i in range(100)]
    assert (run(flips, LEGACY).report.major_drift_samples, run(flips, LEGACY).report.status) == (
        10,
        "pass",
    )
    # The calibrated judge cannot tell 10 of 100 from a share above 10 %: the one-sided 95 %
    # upper bound is 16 %, so neither pass nor fail.
    r = run(flips).report
    assert (r.major_drift_samples, r.status, r.passed) == (10, "inconclusive", False)
    assert [x.code for x in r.reasons] == ["MAJOR_DRIFT_INCONCLUSIVE"]
    flips = [Sample(f"s{i}", {"a": 5, "b": 5, "b_feasible": i >= 11}) for i in range(100)]
    assert (run(flips, LEGACY).report.major_drift_samples, run(flips, LEGACY).report.status) == (
        11,
        "fail",
    )
    # 11 of 100 is above the limit but not significantly above 5 % (p = 0.011 > 0.01 / 3).
    assert run(flips).report.status == "inconclusive"
    flips = [Sample(f"s{i}", {"a": 5, "b": 5, "b_feasible": i >= 14}) for i in range(100)]
    r = run(flips).report
    assert (r.status, [x.code for x in r.reasons]) == ("fail", ["MAJOR_DRIFT_HIGH"])


@pytest.mark.parametrize(
    ("sample_list", "code"),
    [
        ([], "NO_SAMPLES"),
        ([Sample(f"s{i}", {"oops": 1}) for i in range(50)], "MOSTLY_INVALID_SAMPLES"),
        (samples([(1, 1)] * 29), "INSUFFICIENT_SAMPLES"),
        (
            samples([(1, 1)] * 40) + [Sample(f"x{i}", {}) for i in range(41)],
            "MOSTLY_INVALID_SAMPLES",
        ),
    ],
)
def test_fail_closed(sample_list, code):
    r = run(sample_list).report
    assert (r.status, r.passed) == ("error", False)
    assert [reason.code for reason in r.reasons] == [code]
    if code == "NO_SAMPLES":
        assert r.failure_reasons == ("no samples",)


@settings(max_examples=40, deadline=None)
@given(
    valid=st.integers(0, 80),
    invalid=st.integers(0, 80),
    min_samples=st.integers(1, 60),
)
def test_never_passes_when_it_cannot_judge(valid, invalid, min_samples):
    sample_list = samples([(7, 7)] * valid) + [Sample(f"x{i}", {}) for i in range(invalid)]
    total = valid + invalid
    cannot_judge = total == 0 or invalid / total > 0.5 or valid < min_samples
    legacy = run(sample_list, CanaryConfig(min_samples=min_samples, judge=JUDGES["legacy"]))
    assert (legacy.report.status == "error") == cannot_judge
    assert legacy.report.passed == (not cannot_judge)
    r = run(sample_list, CanaryConfig(min_samples=min_samples)).report
    assert (r.status == "error") == cannot_judge
    # Identical costs: the calibrated judge passes once the sample can show the outlier share
    # is within 5 % (59 samples at 95 %), and is inconclusive below that, never a pass.
    if not cannot_judge:
        assert r.status == ("pass" if valid >= 59 else "inconclusive")
    assert r.passed == (r.status == "pass")
    assert r.total_samples == valid and r.invalid_samples == invalid


def test_significance_rule_is_off_by_default_and_fails_when_enabled():
    # every sample 3 % dearer: MATCH under the drift bands, and the distributions overlap
    pairs = [(float(a), round(a * 1.03)) for a in range(50, 250)]
    assert run(samples(pairs)).report.status == "pass"
    r = run(samples(pairs), CanaryConfig(median_delta_tolerance=0.01)).report
    assert r.status == "fail"
    [reason] = r.reasons
    assert reason.code == "MEDIAN_DELTA_SIGNIFICANT"
    assert reason.interval is not None and reason.interval.low > 0.01
    assert run(samples(pairs), CanaryConfig(median_delta_tolerance=0.05)).report.status == "pass"


def test_statistics_are_reported_and_seeded():
    rng = np.random.default_rng(3)
    pairs = [
        (float(a), float(a + d))
        for a, d in zip(rng.integers(1, 50, 200), rng.normal(0, 2, 200), strict=True)
    ]
    one, two = run(samples(pairs), seed=11).report, run(samples(pairs), seed=11).report
    assert one.statistics == two.statistics
    s = one.statistics
    assert s.paired_test.method == "wilcoxon" and 0 <= s.paired_test.p_value <= 1
    ci = s.median_cost_diff_ci
    assert ci.low <= one.median_cost_diff <= ci.high and ci.resamples == 2000


def test_artifacts_hold_every_sample_and_the_binning():
    pairs = [(10, 10)] * 95 + [(10, 30)] * 5
    sample_list = [*samples(pairs), Sample("broken", {"nothing": 1})]
    ev = run(sample_list)
    files = sample_artifacts(ev)
    comparisons = [json.loads(line) for line in files[COMPARISONS_FILE].decode().splitlines()]
    diffs = [json.loads(line) for line in files[DIFFS_FILE].decode().splitlines()]
    assert len(comparisons) == 101
    assert comparisons[-1]["baseline"]["valid"] is False and "verdict" not in comparisons[-1]
    assert {d["id"] for d in diffs} == {f"s{i}" for i in range(95, 100)}
    # A diff points at its comparison by line and repeats its drift, never its plan.
    for diff in diffs:
        row = comparisons[diff["index"]]
        assert row["id"] == diff["id"] and row["plan_input"]["b"] == 30
        assert diff["verdict"] == row["verdict"] == "MISMATCH"
        drift = ("cost_delta", "cost_delta_pct", "drift_score")
        assert [diff[k] for k in drift] == [row[k] for k in drift]
        assert set(diff) == {"index", "id", "verdict", *drift}
    report = json.loads(report_artifact(ev, ev.report, {"request_id": ""}))
    assert report["kl_binning"]["epsilon"] == ev.divergence.epsilon
    assert len(report["kl_binning"]["edges"]) == report["kl_binning"]["bins"] + 1
    assert sum(report["kl_binning"]["baseline_counts"]) == 100
    assert report["config"]["drift_threshold"] == 0.2


def test_choose_is_deterministic_for_a_seed():
    ids = list(range(1000))
    assert choose(ids, 50, seed=1) == choose(ids, 50, seed=1)
    assert choose(ids, 50, seed=1) != choose(ids, 50, seed=2)
    assert choose(ids[:10], 50, seed=1) == ids[:10]


def test_real_models_on_the_synthetic_set_are_judged():
    from costsim_analytics.engines.canary.synthetic import synthetic_samples

    sample_list = [Sample(i, p) for i, p in synthetic_samples()]
    ev = evaluate(
        sample_list,
        load_cost_model("v1"),
        load_cost_model("v2"),
        CanaryConfig(),
        run_id="c",
        timestamp=NOW,
        seed=0,
        sample_source="synthetic",
    )
    r = ev.report
    assert r.total_samples == 120 and r.invalid_samples == 0
    assert r.status in ("pass", "fail")
    assert r.matching_samples + r.minor_drift_samples + r.major_drift_samples == 120


# --- judges ------------------------------------------------------------------------------------


def test_a_skipped_run_is_not_passed():
    from costsim_analytics.engines.canary.evaluation import skipped

    r = skipped("canary-x", NOW, "v1", "v2")
    assert (r.status, r.passed, r.reasons[0].code) == ("skipped", False, "RUN_IN_PROGRESS")


def test_report_records_the_judge_binning_and_permutations():
    pairs = [(c, c + (c % 3 == 0)) for c in range(10, 210)]
    ev = run(samples(pairs))
    j = ev.report.statistics.judgement
    assert (j.judge, j.kl_bin_method, j.kl_smoothing, j.correction) == (
        "calibrated",
        "quantile",
        "laplace",
        "holm",
    )
    assert (j.permutations, j.permutation_seed, j.alpha) == (1000, 3, 0.01)
    assert [r.rule for r in j.rules] == ["kl_divergence", "outliers", "major_drift"]
    assert all(r.p_value is not None and r.level is not None for r in j.rules)
    # The report column keeps the predecessor's equal-width KL; the judged one is beside it.
    from costsim_analytics.engines import statistics as stats

    assert (
        ev.report.kl_divergence == stats.divergence([a for a, _ in pairs], [b for _, b in pairs]).kl
    )
    artifact = json.loads(report_artifact(ev, ev.report, {}))
    assert artifact["config"]["judge"] == "calibrated"
    assert artifact["config"]["permutations"] == 1000
    assert artifact["judge_binning"]["method"] == "quantile"
    assert sum(artifact["judge_binning"]["baseline_counts"]) == 200
    assert artifact["statistics"]["judgement"]["rules"][0]["rule"] == "kl_divergence"


def test_judgement_round_trips_through_the_stored_json():
    from costsim_analytics.engines.reports import report_from_json, report_to_json

    report = run(samples([(c, c) for c in range(1, 101)])).report
    back = report_from_json(json.loads(json.dumps(report_to_json(report))))
    assert back.statistics == report.statistics and back.status == "pass"


def test_legacy_judge_reproduces_the_predecessor_verdict():
    pairs = [(10, 10)] * 80 + [(10, 30)] * 20
    legacy = run(samples(pairs), LEGACY).report
    calibrated = run(samples(pairs)).report
    assert legacy.status == calibrated.status == "fail"
    assert legacy.statistics.judgement.judge == "legacy"
    assert legacy.statistics.judgement.permutations == 0
    assert all(r.p_value is None for r in legacy.statistics.judgement.rules)
    assert legacy.kl_divergence == calibrated.kl_divergence


def test_kl_above_threshold_but_not_significant_is_inconclusive():
    # Three of 30 pairs move up a bin: KL is above a strict threshold, but one swap pattern
    # in eight (all three up) gives as much, so the sign-flip null cannot call it real.
    pairs = [(float(c), float(c)) for c in range(100, 190, 3)]
    for i in (4, 12, 20):
        pairs[i] = (pairs[i][0], pairs[i][0] * 1.3)
    config = CanaryConfig(drift_threshold=0.01, outlier_max_pct=1.0, major_drift_max_pct=1.0)
    r = run(samples(pairs), config).report
    kl = r.statistics.judgement.rules[0]
    assert kl.observed > 0.01 and kl.p_value > kl.level
    assert (r.status, r.reasons[0].code) == ("inconclusive", "KL_DIVERGENCE_INCONCLUSIVE")
    assert run(samples(pairs), replace(config, judge=JUDGES["legacy"])).report.status == "fail"


def test_median_delta_rule_shares_the_false_alarm_budget():
    pairs = [(100.0, 100.0 + (i % 7)) for i in range(200)]
    config = CanaryConfig(median_delta_tolerance=0.01)
    r = run(samples(pairs), config).report
    rules = {x.rule: x for x in r.statistics.judgement.rules}
    assert set(rules) == {"kl_divergence", "outliers", "major_drift", "median_delta"}
    assert rules["median_delta"].decision == "fail" and rules["median_delta"].p_value <= 0.0025
    assert "MEDIAN_DELTA_SIGNIFICANT" in [x.code for x in r.reasons]


def test_a_failed_golden_comparison_fails_an_inconclusive_report():
    from costsim_analytics.engines.findings import FailureReason
    from costsim_analytics.engines.golden.comparison import judge_report

    report = run(samples([(7, 7)] * 40)).report
    assert report.status == "inconclusive"

    class Comparison:
        reasons = (FailureReason("GOLDEN_COMPARISON_FAILED", "m", 0.5, 0.9, "<", "golden"),)

    judged = judge_report(report, Comparison())  # type: ignore[arg-type]  # only .reasons is read
    assert (judged.status, judged.passed) == ("fail", False)


def test_an_unknown_judge_is_refused():
    from costsim_analytics.engines.canary.command import RunCanary, resolve_config, validate
    from costsim_analytics.engines.errors import InvalidArgument

    with pytest.raises(InvalidArgument, match="judge"):
        validate(RunCanary(judge="strict"))
    assert resolve_config(RunCanary(judge="legacy"), CanaryConfig()).judge == JUDGES["legacy"]


def test_the_largest_seed_wraps_its_derived_streams_to_64_bits():
    # Once seed + 3 (2**64 + 2): stored, then INTERNAL when the answer's uint64 could not hold it.
    pairs = [(c, c + (c % 3 == 0)) for c in range(10, 60)]
    top = run(samples(pairs), seed=2**64 - 1).report
    assert top.statistics.judgement.permutation_seed == 2
    assert top.seed == 2**64 - 1
    assert run(samples(pairs), seed=7).report.statistics.judgement.permutation_seed == 10


@pytest.mark.parametrize("limit", [5e-324, 1e-17])
def test_a_vanishing_share_limit_is_judged_not_an_internal_error(limit):
    pairs = [(c, c) for c in range(10, 110)]
    config = replace(DEFAULTS, outlier_max_pct=limit, major_drift_max_pct=limit)
    report = run(samples(pairs), config=config).report
    assert report.status == "inconclusive" and not report.passed
    assert {r.code for r in report.reasons} >= {"OUTLIERS_INCONCLUSIVE"}
