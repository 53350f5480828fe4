"""A few of bench/judge.py's scenarios, pinned with fixed seeds, so a regression fails CI.

The bench runs 1,000 canaries per scenario and sample count; here a few dozen, through the
same code (real V1, the wrapping candidate, ``engines.canary.evaluate``).
"""

import importlib.util
import sys
from pathlib import Path

import pytest

from costsim_analytics.engines.canary.evaluation import CanaryConfig
from costsim_analytics.engines.canary.judge import JUDGES

BENCH = Path(__file__).resolve().parents[2] / "bench" / "judge.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_judge", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[spec.name]


@pytest.fixture(scope="module")
def scenario(bench):
    by_name = {s.name: s for s in bench.scenarios()}
    return by_name.__getitem__


JUDGE_PAIR = {"calibrated": JUDGES["calibrated"], "legacy": JUDGES["legacy"]}


def cell(bench, s, n, reps):
    return bench.run_cell((s, n, reps, JUDGE_PAIR))["counts"]


def test_the_candidate_wrapper_is_v1_when_nothing_changes(bench, scenario):
    plans = bench.typical_plans(500, seed=11)
    v1 = bench.load_cost_model("v1").estimate_batch(plans)
    same = bench.candidate_for(scenario("a identical"), seed=7).estimate_batch(plans)
    assert (same.cost_cents == v1.cost_cents).all() and (same.feasible == v1.feasible).all()
    one = bench.candidate_for(scenario("c +50% on 100%"), seed=7)
    assert one.estimate(plans[3]).cost_cents == one.estimate_batch(plans).cost_cents[3]


def test_population_labels(bench, scenario):
    config = CanaryConfig()
    plans = bench.plans_for("typical")
    for name, expected in (("a identical", "should-pass"), ("c +50% on 100%", "should-fail")):
        values = bench.population_values(scenario(name), plans, config)
        assert bench.label(values, config) == expected
    assert bench.population_values(scenario("a identical"), plans, config)["kl"] == 0.0


def test_a_small_shift_on_every_plan_is_a_legacy_false_alarm_but_not_a_calibrated_one(
    bench, scenario
):
    counts = cell(bench, scenario("c +10% on 100%"), 100, 60)
    assert counts["calibrated"]["fail"] == 0
    assert counts["legacy"]["fail"] >= 1  # the predecessor's KL rule fires on noise


def test_a_large_shift_fails_every_time_with_or_without_an_extreme_plan(bench, scenario):
    for name in ("c +50% on 100%", "d +50% on 100% +extreme"):
        counts = cell(bench, scenario(name), 100, 20)
        assert counts["calibrated"]["fail"] == 20, name


def test_one_extreme_plan_hides_a_shift_from_the_legacy_kl_rule_only(bench, scenario):
    plain = cell(bench, scenario("c +25% on 100%"), 100, 30)
    extreme = cell(bench, scenario("d +25% on 100% +extreme"), 100, 30)
    assert plain["legacy"]["kl_fail"] >= 5 and extreme["legacy"]["kl_fail"] == 0
    assert plain["calibrated"]["fail"] == extreme["calibrated"]["fail"] == 30


def test_thirty_identical_samples_are_inconclusive_not_a_pass(bench, scenario):
    counts = cell(bench, scenario("a identical"), 30, 10)
    assert counts["calibrated"] == {"pass": 0, "fail": 0, "inconclusive": 10, "kl_fail": 0}
    assert counts["legacy"]["pass"] == 10
