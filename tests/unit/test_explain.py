"""Explaining a canary run: plans and models built so that the answer is known."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from datetime import UTC, datetime

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from costsim_analytics.engines.canary.attribution import NOT_IN_PLAN, OTHER, PLAN_LEVEL
from costsim_analytics.engines.canary.evaluation import (
    CanaryConfig,
    Sample,
    evaluate,
    report_artifact,
    sample_artifacts,
)
from costsim_analytics.engines.canary.explain import (
    MAX_TOP,
    ExplainRun,
    RunNotExplainable,
    explain,
    validate,
)
from costsim_analytics.engines.cost_models import (
    StepColumns,
    V1CostModel,
    load_cost_model,
)
from costsim_analytics.engines.cost_models.batch import plan_columns
from costsim_analytics.engines.cost_models.plans import HTTP_CALL, LLM_INVOKE
from costsim_analytics.engines.errors import InvalidArgument

NOW = datetime(2026, 11, 26, tzinfo=UTC)
CONFIG = CanaryConfig(min_samples=1, permutations=100, bootstrap_resamples=200)
V1, V2 = load_cost_model("v1"), load_cost_model("v2")


class Retuned(V1CostModel):
    """V1 with one change to one skill's per-step cost or latency: the known answer."""

    def __init__(self, name: str, skill: int, *, cost=None, latency=None, breakdown=True):
        self.name, self.skill, self.cost, self.latency = name, skill, cost, latency
        self.breakdown = breakdown

    def estimate_batch(self, plan_inputs):
        batch = super().estimate_batch(plan_inputs)
        assert batch.steps is not None
        cols = plan_columns(plan_inputs)
        hit = cols.skill == self.skill
        cost, latency = batch.steps.cost_cents.copy(), batch.steps.latency_ms.copy()
        if self.cost:
            cost[hit] = self.cost(cols, hit)
        if self.latency:
            latency[hit] = self.latency(cols, hit)
        total_cost, duration = cols.fold_sum(cost), cols.fold_sum(latency)
        out = cols.estimates(
            total_cost,
            duration,
            batch.cumulative_risk.copy(),
            permissions=True,
            steps=(cost, latency, batch.steps.risk),
        )
        return out if self.breakdown else replace(out, steps=None)


class Overhead(V1CostModel):
    """V1 plus one step of its own per plan ("planner", 2 cents) that no plan names."""

    name = "overhead"

    def estimate_batch(self, plan_inputs):
        batch = super().estimate_batch(plan_inputs)
        assert batch.steps is not None
        n, costs, lats, risks, skills = [], [], [], [], []
        start = 0
        for i, count in enumerate(batch.steps.n_steps.tolist()):
            window = slice(start, start + count)
            start += count
            plan = [s["skill"] for s in plan_inputs[i]["plan"]] if batch.valid[i] else []
            extra = 1 if batch.valid[i] else 0
            n.append(count + extra)
            costs += [*batch.steps.cost_cents[window].tolist(), *[2.0] * extra]
            lats += [*batch.steps.latency_ms[window].tolist(), *[0.0] * extra]
            risks += [*batch.steps.risk[window].tolist(), *[0.0] * extra]
            skills += [*plan, *["planner"] * extra]
        steps = StepColumns(
            np.array(n), np.array(costs), np.array(lats), np.array(risks), tuple(skills)
        )
        cost = np.where(batch.valid, batch.cost_cents + 2.0, np.nan)
        return replace(batch, cost_cents=cost, steps=steps)


def step(skill, **params):
    return {"skill": skill, "params": params} if params else {"skill": skill}


def plans(*plan_lists, budget=1000):
    return [Sample(f"s{i}", {"plan": p, "budget_cents": budget}) for i, p in enumerate(plan_lists)]


def run(samples, baseline=V1, candidate=V2, *, seed=3):
    ev = evaluate(
        samples,
        baseline,
        candidate,
        CONFIG,
        run_id="canary-test",
        timestamp=NOW,
        seed=seed,
        sample_source="explicit",
    )
    files = sample_artifacts(ev)
    return ev.report, json.loads(report_artifact(ev, ev.report, {})), files["comparisons.jsonl"]


def explained(samples, baseline=V1, candidate=V2, group_by="", top=0, seed=3):
    report, report_json, comparisons = run(samples, baseline, candidate, seed=seed)
    return explain(ExplainRun(report.run_id, group_by, top), report, report_json, comparisons)


def by_group(explanation):
    return {g.group: g for g in explanation.groups}


def prompt_plans(count=40):
    """llm_invoke with prompts of many lengths beside steps that cost 0 under both models."""
    rng = np.random.default_rng(1)
    out = []
    for i in range(count):
        chars = int(rng.integers(0, 12_000))
        out.append(
            [
                step("http_call", url="http://localhost/x"),
                step("llm_invoke", prompt="p" * chars),
                step("kv_get"),
                step("fs_read"),
            ][: 2 + i % 3]
        )
    return plans(*out)


# --- the known answers ----------------------------------------------------------------------


def test_only_llm_invoke_pricing_changed_carries_all_of_the_delta():
    candidate = Retuned(
        "prompt-priced", LLM_INVOKE, cost=lambda cols, hit: 1.0 + cols.prompt_chars[hit] // 500
    )
    e = explained(prompt_plans(), V1, candidate)
    groups = by_group(e)
    assert groups["llm_invoke"].share == 1.0
    assert (groups["llm_invoke"].share_low, groups["llm_invoke"].share_high) == (1.0, 1.0)
    assert all(g.abs_delta == 0.0 for name, g in groups.items() if name != "llm_invoke")
    assert PLAN_LEVEL not in groups  # V1's totals are exactly the sum of its steps
    assert e.total_delta == pytest.approx(groups["llm_invoke"].delta)
    assert groups["llm_invoke"].steps == 40 and groups["llm_invoke"].samples == 40


def test_llm_prompts_under_v1_and_v2_only_llm_invoke_and_v2s_rounding_move():
    e = explained(prompt_plans())
    groups = by_group(e)
    moved = {name for name, g in groups.items() if g.abs_delta > 0}
    assert moved <= {"llm_invoke", PLAN_LEVEL}
    assert groups["llm_invoke"].share > 0.9  # the rest is V2 rounding its totals
    assert groups["llm_invoke"].share + groups[PLAN_LEVEL].share == pytest.approx(1.0)
    # The groups' deltas add up to the run's: candidate minus baseline over every sample.
    assert sum(g.delta for g in e.groups) == pytest.approx(e.total_delta)
    assert e.total_abs_delta >= e.samples_abs_delta


def test_external_http_calls_flip_feasibility_on_the_risk_side_without_a_cent_of_delta():
    # Six external calls: V1 risk 1 - 0.9^6 (feasible), V2 1 - 0.88^6 > 0.5 (infeasible). The
    # kv_get is less risky under V2: it pushed against the flip and gets none of it.
    plan = [*[step("http_call", url="https://api.test")] * 6, step("kv_get")]
    e = explained(plans(*[plan] * 30))
    groups = by_group(e)
    assert e.total_abs_delta == 0.0 and all(g.share == 0.0 for g in e.groups)
    assert e.flips == 30
    assert groups["http_call"].flip_share == 1.0
    assert groups["http_call"].flips == pytest.approx(30.0)
    assert groups["kv_get"].flips == 0.0
    assert groups["http_call"].v2_mean_risk > groups["http_call"].v1_mean_risk
    assert max(e.groups, key=lambda g: g.risk_share).group == "http_call"
    assert e.top[0].flip_causes == ("risk",)


def test_http_call_timeouts_show_on_the_latency_side():
    # The candidate ignores the timeout: every http_call takes its full 500 ms.
    candidate = Retuned("no-timeouts", HTTP_CALL, latency=lambda cols, hit: 500.0)
    samples = plans(
        *[[step("http_call", url="http://localhost", timeout_s=0.1), step("kv_get")]] * 12
    )
    e = explained(samples, V1, candidate)
    groups = by_group(e)
    assert e.total_abs_delta == 0.0
    assert groups["http_call"].duration_share == 1.0 and groups["kv_get"].duration_share == 0.0
    assert groups["http_call"].v1_duration_ms == 12 * 100.0
    assert groups["http_call"].v2_duration_ms == 12 * 500.0


def test_identical_pricing_is_zero_everywhere():
    e = explained(prompt_plans(), V1, V1)
    assert e.total_abs_delta == e.total_delta == 0.0 and e.flips == 0
    assert all(g.share == g.delta == g.flips == g.duration_share == 0.0 for g in e.groups)
    assert PLAN_LEVEL not in by_group(e)


def test_a_step_one_breakdown_lacks_is_its_own_group_with_all_of_its_cost_as_delta():
    e = explained(prompt_plans(10), V1, Overhead())
    groups = by_group(e)
    planner = groups["planner"]
    assert (planner.v1_cost, planner.v2_cost, planner.delta) == (0.0, 20.0, 20.0)
    assert planner.share == 1.0 and planner.steps == 10
    positions = explained(prompt_plans(10), V1, Overhead(), group_by="iterations")
    assert by_group(positions)[NOT_IN_PLAN].share == 1.0
    top = e.top[0]
    extra = [s for s in top.steps if s.skill == "planner"]
    assert len(extra) == 1 and extra[0].v1_cost is None and extra[0].v2_cost == 2.0


def test_a_model_without_a_breakdown_leaves_everything_at_the_plan_level():
    candidate = Retuned("opaque", LLM_INVOKE, cost=lambda c, h: 9.0, breakdown=False)
    e = explained(prompt_plans(12), V1, candidate)
    assert e.samples_without_steps == 12
    assert [g.group for g in e.groups if g.abs_delta] == [PLAN_LEVEL]
    assert all(s.steps == () for s in e.top)


def test_groupings_and_their_bands():
    samples = prompt_plans()
    position = explained(samples, group_by="position")
    assert [g.group for g in position.groups][:2] == ["1", "2"]  # in band order
    bands = explained(samples, group_by="prompt_band")
    assert {g.group for g in bands.groups} >= {"(no prompt)", "0-999 chars"}
    assert by_group(bands)["(no prompt)"].abs_delta == 0.0
    iterations = explained(
        plans([step("email_send") | {"iterations": 4}], [step("email_send")]),
        group_by="iterations",
    )
    assert {g.group for g in iterations.groups} >= {"1", "3-5"}


def test_top_samples_are_the_most_drifting_with_their_breakdown():
    e = explained(prompt_plans(), top=5)
    assert len(e.top) == 5
    keys = [(-s.drift_score, -abs(s.cost_delta), s.index) for s in e.top]
    assert keys == sorted(keys)
    first = e.top[0]
    assert sum(s.cost_delta for s in first.steps) == pytest.approx(first.cost_delta)
    assert first.plan_input["plan"][0]["skill"] == first.steps[0].skill


def test_histograms_are_recounted_on_the_reports_own_bins():
    report, report_json, comparisons = run(prompt_plans())
    e = explain(ExplainRun(report.run_id), report, report_json, comparisons)
    names = [h.name for h in e.histograms]
    assert names == ["kl_divergence", "judgement"]
    kl = e.histograms[0]
    assert list(kl.edges) == report_json["kl_binning"]["edges"]
    assert list(kl.baseline_counts) == report_json["kl_binning"]["baseline_counts"]
    assert kl.kl == report.kl_divergence
    assert e.histograms[1].method == report_json["judge_binning"]["method"]
    tampered = json.loads(json.dumps(report_json))
    tampered["kl_binning"]["baseline_counts"][0] += 1
    with pytest.raises(RunNotExplainable, match="histogram"):
        explain(ExplainRun(report.run_id), report, tampered, comparisons)


def test_the_same_artifacts_give_the_same_intervals_and_another_seed_others():
    samples = prompt_plans()
    first, again = explained(samples), explained(samples)
    assert first.groups == again.groups
    other = explained(samples, seed=4)
    assert [g.share for g in other.groups] == [g.share for g in first.groups]
    llm = by_group(first)["llm_invoke"]
    assert llm.share_low <= llm.share <= llm.share_high
    assert by_group(other)["llm_invoke"].share_low != llm.share_low


def test_a_run_from_before_per_step_estimates_is_refused_not_guessed():
    report, report_json, comparisons = run(prompt_plans(5))
    rows = [json.loads(line) for line in comparisons.splitlines()]
    for row in rows:
        for side in ("baseline", "candidate"):
            row[side].pop("steps", None)
            row[side].pop("cumulative_risk", None)
    old = b"".join(json.dumps(r).encode() + b"\n" for r in rows)
    with pytest.raises(RunNotExplainable, match="predates per-step estimates") as exc:
        explain(ExplainRun(report.run_id), report, report_json, old)
    assert exc.value.reason == "RUN_NOT_EXPLAINABLE"


def test_comparisons_that_do_not_fit_the_report_are_refused():
    report, report_json, comparisons = run(prompt_plans(5))
    with pytest.raises(RunNotExplainable, match="valid samples"):
        explain(
            ExplainRun(report.run_id),
            replace(report, total_samples=6),
            report_json,
            comparisons,
        )
    with pytest.raises(RunNotExplainable, match="not JSON"):
        explain(ExplainRun(report.run_id), report, report_json, b"{nope\n")


@pytest.mark.parametrize(
    ("cmd", "field"),
    [
        (ExplainRun(""), "run_id"),
        (ExplainRun("x" * 300), "run_id"),
        (ExplainRun("run\x00"), "run_id"),
        (ExplainRun("r", group_by="colour"), "group_by"),
        (ExplainRun("r", top=-1), "top"),
        (ExplainRun("r", top=MAX_TOP + 1), "top"),
    ],
)
def test_bad_commands_name_their_field(cmd, field):
    with pytest.raises(InvalidArgument) as exc:
        validate(cmd)
    assert [v.field for v in exc.value.violations] == [field]


def test_more_skills_than_rows_are_added_up_into_one_group():
    names = [f"tool-{i:03d}" for i in range(130)]  # unknown skills: V1 10 cents, V2 5
    e = explained(plans(*[[step(name)] for name in names]))
    assert len(e.groups) == 101 and e.groups[-1].group == OTHER
    assert e.groups[-1].steps == 30
    assert sum(g.share for g in e.groups) == pytest.approx(1.0)


# --- properties -----------------------------------------------------------------------------

SKILLS = ["http_call", "llm_invoke", "email_send", "kv_get", "shell_lite", "mystery"]


@st.composite
def plan_steps(draw):
    skill = draw(st.sampled_from(SKILLS))
    s = {"skill": skill}
    if skill == "llm_invoke":
        s["params"] = {"prompt": "p" * draw(st.integers(0, 9000))}
    elif skill == "http_call":
        s["params"] = {"url": draw(st.sampled_from(["http://localhost", "https://x.test"]))}
        if draw(st.booleans()):
            s["params"]["timeout_s"] = draw(st.sampled_from([0.1, 0.3, 30.0]))
    elif skill == "shell_lite":
        s["params"] = {"command": "c" * draw(st.integers(0, 150))}
    if draw(st.booleans()):
        s["iterations"] = draw(st.integers(1, 12))
    return s


@st.composite
def runs(draw):
    count = draw(st.integers(1, 12))
    samples = []
    for i in range(count):
        plan_input = {
            "plan": draw(st.lists(plan_steps(), max_size=8)),
            "budget_cents": draw(st.sampled_from([0, 5, 12, 40, 1000])),
        }
        if draw(st.integers(0, 4)) == 0:
            plan_input["permissions"] = draw(st.lists(st.sampled_from(SKILLS), max_size=3))
        samples.append(Sample(f"s{i}", plan_input))
    return samples


PAIRS = {
    "v1-v2": (V1, V2),
    "v2-v1": (V2, V1),
    "v1-overhead": (V1, Overhead()),
}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(samples=runs(), pair=st.sampled_from(sorted(PAIRS)), group_by=st.sampled_from(
    ["skill", "position", "iterations", "prompt_band"]
))  # fmt: skip
def test_shares_add_up_and_groups_partition_the_steps(samples, pair, group_by):
    baseline, candidate = PAIRS[pair]
    report, report_json, comparisons = run(samples, baseline, candidate)
    e = explain(ExplainRun(report.run_id, group_by), report, report_json, comparisons)
    shares = sum(g.share for g in e.groups)
    assert shares == pytest.approx(1.0) if e.total_abs_delta > 0 else shares == 0.0
    flip_shares = sum(g.flip_share for g in e.groups)
    assert flip_shares == pytest.approx(1.0) if e.flips else flip_shares == 0.0
    assert sum(g.flips for g in e.groups) == pytest.approx(e.flips)
    # Every step is in exactly one group (the plan-level items are not steps).
    step_rows = [g for g in e.groups if g.group != PLAN_LEVEL]
    assert sum(g.steps for g in step_rows) == e.steps
    assert len({g.group for g in e.groups}) == len(e.groups)
    # Deltas add up to the run's, and the run's is candidate minus baseline.
    rows = [json.loads(line) for line in comparisons.splitlines()]
    valid = [r for r in rows if r["baseline"]["valid"] and r["candidate"]["valid"]]
    expected = math.fsum(r["candidate"]["cost_cents"] - r["baseline"]["cost_cents"] for r in valid)
    assert sum(g.delta for g in e.groups) == pytest.approx(expected, abs=1e-6)
    for g in e.groups:
        assert 0.0 <= g.share_low <= g.share_high <= 1.0 + 1e-12
        assert g.abs_delta >= abs(g.delta) - 1e-9


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(samples=runs(), model=st.sampled_from(["v1", "v2"]))
def test_a_pair_with_identical_pricing_has_zero_delta_everywhere(samples, model):
    e = explained(samples, load_cost_model(model), load_cost_model(model), top=MAX_TOP)
    assert e.total_abs_delta == 0.0 and e.flips == 0
    for g in e.groups:
        assert g.delta == g.abs_delta == g.share == g.flips == g.duration_share == 0.0
        assert g.v1_cost == g.v2_cost and g.v1_mean_risk == g.v2_mean_risk
    for s in e.top:
        assert all(b.cost_delta == 0.0 and b.v1_cost == b.v2_cost for b in s.steps)
