import importlib.metadata
import math
import re
from types import MappingProxyType

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from costsim_analytics.engines.cost_models import (
    ENTRY_POINT_GROUP,
    CostModel,
    InvalidPlan,
    PlanBatch,
    V1CostModel,
    V2CostModel,
    available_cost_models,
    load_cost_model,
)
from costsim_analytics.engines.cost_models.plans import KNOWN_SKILLS
from costsim_analytics.engines.errors import FailedPrecondition, InvalidArgument

V1, V2 = V1CostModel(), V2CostModel()
MODELS: list[CostModel] = [V1, V2]


def step(skill, iterations=None, **params):
    s = {"skill": skill, "params": params}
    if iterations is not None:
        s["iterations"] = iterations
    return s


def run(model, *steps, budget=1000, **extra):
    """Estimate with both paths, check they agree, return the reference Estimate."""
    plan_input = {"plan": list(steps), "budget_cents": budget, **extra}
    est = model.estimate(plan_input)
    batch = model.estimate_batch([plan_input])
    assert batch.valid[0] and batch.errors == (None,)
    assert batch.cost_cents[0] == est.cost_cents
    assert batch.duration_ms[0] == est.duration_ms
    assert batch.cumulative_risk[0] == est.cumulative_risk
    assert batch.feasible[0] == est.feasible
    return est


def only(model, s, **kw):
    [st_] = run(model, s, **kw).steps
    return st_


# ---- V1 -------------------------------------------------------------------------------------


def test_v1_known_plan_by_hand():
    est = run(
        V1,
        step("http_call", url="https://api.example.com"),  # 0 ¢, 500 ms, p 0.10
        step("llm_invoke", prompt="x" * 2500),  # max(5, 2500 // 1000 = 2) = 5 ¢, 2000 ms, 0.05
        step("json_transform"),  # 0 ¢, 10 ms, 0.01
        step("email_send", iterations=3),  # 3 x 1 ¢, 3 x 500 ms, 1 - 0.95**3 = 0.142625
        budget=10,
    )
    assert est.cost_cents == 8  # 0 + 5 + 0 + 3
    assert est.duration_ms == 4010  # 500 + 2000 + 10 + 1500
    # 1 - 0.9 * 0.95 * 0.99 * 0.857375 = 1 - 0.72572506875
    assert est.cumulative_risk == pytest.approx(0.27427493125, abs=1e-12)
    assert est.confidence == pytest.approx(1 - 0.27427493125)
    assert est.feasible and est.infeasible_reasons == ()
    risk_types = ["timeout", "rate_limit", "transform_error", "delivery"]
    assert [s.risk_type for s in est.steps] == risk_types
    assert [s.risk for s in est.steps[:3]] == [0.10, 0.05, 0.01]  # one iteration: exactly p


@pytest.mark.parametrize(
    ("chars", "cents"), [(0, 5), (1999, 5), (4001, 5), (5999, 5), (6000, 6), (6999, 6), (7000, 7)]
)
def test_v1_llm_cost_is_max_5_and_prompt_thousands(chars, cents):
    assert only(V1, step("llm_invoke", prompt="x" * chars)).cost_cents == cents


@pytest.mark.parametrize(("timeout_s", "latency"), [(None, 500), (0.2, 200), (0, 0), (2, 500)])
def test_v1_http_latency_capped_by_timeout(timeout_s, latency):
    params = {} if timeout_s is None else {"timeout_s": timeout_s}
    assert only(V1, step("http_call", **params)).latency_ms == latency


def test_v1_iterations_multiply_cost_and_latency_and_compound_risk():
    s = only(V1, step("llm_invoke", iterations=3))
    assert (s.cost_cents, s.latency_ms) == (15, 6000)  # 3 x 5 ¢, 3 x 2000 ms
    assert s.risk == pytest.approx(1 - 0.95**3)  # 0.142625


def test_v1_unknown_skill():
    s = only(V1, step("vector_search"))
    assert (s.skill, s.risk_type) == ("vector_search", "unknown")
    assert (s.cost_cents, s.latency_ms, s.risk, s.confidence) == (10, 1000, 0.2, 0.8)


def test_v1_risk_compounds_over_steps_and_iterations():
    six = run(V1, step("shell_lite", iterations=6))  # 1 - 0.9**6 = 0.468559
    seven = run(V1, step("shell_lite", iterations=7))  # 1 - 0.9**7 = 0.5217031
    assert six.feasible and six.cumulative_risk == pytest.approx(0.468559)
    assert not seven.feasible and seven.infeasible_reasons == ("risk 0.52 > 0.5",)
    # three steps: 1 - 0.9 * 0.8 * 0.98 = 0.2944
    assert run(V1, step("webhook_send"), step("x"), step("kv_set")).cumulative_risk == (
        pytest.approx(0.2944)
    )


def test_v1_permissions():
    plan = (step("shell_lite"), step("kv_get"), step("shell_lite"))
    gap = run(V1, *plan, permissions=["kv_get"])
    assert not gap.feasible and gap.infeasible_reasons == ("permission: shell_lite",)
    assert run(V1, *plan).feasible  # no "permissions": no gap
    assert run(V1, *plan, permissions=["shell_lite", "kv_get"]).feasible
    assert run(V2, *plan, permissions=[]).feasible  # V2 does not check permissions


# ---- V2 -------------------------------------------------------------------------------------


def test_v2_known_plan_by_hand():
    est = run(
        V2,
        step("http_call", url="https://api.example.com"),  # 0 ¢, 500 ms, risk 0.08 x 1.5 = 0.12
        step("llm_invoke", prompt="x" * 2500),  # 3.5 + 2.5 x 0.8 + 4.0 x 1.2 = 10.3 ¢, 2300 ms
        step("json_transform"),  # 0 ¢, 5 ms, risk 0.005 (not counted: <= 0.02)
        step("email_send", iterations=3),  # iterations ignored: 0.8 ¢, 350 ms, risk 0.03
        budget=10,
    )
    assert est.cost_cents == 11  # round(0 + 10.3 + 0 + 0.8 = 11.1)
    assert est.duration_ms == 3155  # 500 + 2300 + 5 + 350
    assert est.cumulative_risk == pytest.approx(1 - 0.88 * 0.97 * 0.97)  # 0.172008
    # confidences 0.85 x 0.95, 0.92 x 0.95, 0.98, 0.93
    assert [s.confidence for s in est.steps] == pytest.approx([0.8075, 0.874, 0.98, 0.93])
    assert est.confidence == pytest.approx(0.8075 * 0.874 * 0.98 * 0.93)
    assert not est.feasible and est.infeasible_reasons == ("over budget",)  # 11 > 10


@pytest.mark.parametrize(
    ("chars", "cost", "latency", "confidence"),
    [
        (1999, 9.8968, 2199.8, 0.92),  # 3.5 + 1.999 x 0.8 + 3.998 x 1.2; 1800 + 1.999 x 200
        (2000, 9.9, 2200.0, 0.92),  # not above 2,000
        (2001, 9.9008, 2200.2, 0.92 * 0.95),  # output capped at 4,000: 3.5 + 1.6008 + 4.8
        (4000, 11.5, 2600.0, 0.92 * 0.95),
        (4001, 11.5008, 2600.2, 0.92 * 0.95 * 0.90),  # 3.5 + 3.2008 + 4.8
        (0, 3.5, 1800.0, 0.92),
    ],
)
def test_v2_llm_prompt_modifiers(chars, cost, latency, confidence):
    s = only(V2, step("llm_invoke", prompt="x" * chars))
    assert s.cost_cents == pytest.approx(cost)
    assert s.latency_ms == pytest.approx(latency)
    assert s.confidence == pytest.approx(confidence)
    assert s.risk == 0.03


@pytest.mark.parametrize(
    ("url", "risk", "confidence"),
    [
        ("http://localhost:8080/x", 0.08, 0.85),
        ("http://127.0.0.1/x", 0.08, 0.85),
        ("https://localhost/x", 0.12, 0.8075),  # only the literal prefixes are local
        ("https://api.example.com", 0.12, 0.8075),
        (None, 0.12, 0.8075),  # no URL: not local
    ],
)
def test_v2_http_url_modifier(url, risk, confidence):
    params = {} if url is None else {"url": url}
    s = only(V2, step("http_call", **params))
    assert (s.risk, s.confidence) == pytest.approx((risk, confidence))


@pytest.mark.parametrize(("timeout_s", "latency"), [(None, 500), (0.2, 200), (0, 0), (1, 500)])
def test_v2_http_latency_is_min_of_500_and_timeout(timeout_s, latency):
    params = {} if timeout_s is None else {"timeout_s": timeout_s}
    assert only(V2, step("http_call", **params)).latency_ms == latency


@pytest.mark.parametrize(("chars", "risk", "confidence"), [(100, 0.07, 0.88), (101, 0.084, 0.836)])
def test_v2_long_shell_command(chars, risk, confidence):
    s = only(V2, step("shell_lite", command="x" * chars))
    assert (s.risk, s.confidence) == pytest.approx((risk, confidence))


def test_v2_ignores_iterations():
    assert run(V2, step("llm_invoke", iterations=3)).cost_cents == 4  # round(3.5), not 3 x 3.5
    assert run(V2, step("llm_invoke", iterations=3)).duration_ms == 1800


def test_v2_unknown_skill():
    s = only(V2, step("vector_search"))
    assert (s.cost_cents, s.latency_ms, s.risk, s.risk_type) == (5, 500, 0.15, "unknown")
    assert s.confidence == 0.60  # not the table's 0.70


@pytest.mark.parametrize(
    ("skills", "cents"),
    [
        (["llm_invoke"], 4),  # round(3.5) = 4
        (["llm_invoke", "mystery"], 8),  # round(8.5) = 8: half to even
        (["llm_invoke"] * 3, 10),  # round(10.5) = 10
        (["email_send"] * 3, 2),  # round(0.8 + 0.8 + 0.8 = 2.4000000000000004) = 2
    ],
)
def test_v2_total_is_rounded_half_to_even(skills, cents):
    assert run(V2, *(step(s) for s in skills)).cost_cents == cents


def test_v2_only_risks_above_002_count():
    # kv_get 0.01, kv_set 0.01, fs_write 0.02, json_transform 0.005: none is above 0.02
    est = run(V2, step("kv_get"), step("kv_set"), step("fs_write"), step("json_transform"))
    assert est.cumulative_risk == 0.0
    assert est.duration_ms == 63  # 3 + 5 + 50 + 5
    assert [s.risk for s in est.steps] == [0.01, 0.01, 0.02, 0.005]  # still reported per step
    # fs_read 0.03 counts, kv_get 0.01 does not: 1 - 0.97
    assert run(V2, step("fs_read"), step("kv_get")).cumulative_risk == pytest.approx(0.03)


# ---- both models: feasibility, empty plans, inputs -----------------------------------------


@pytest.mark.parametrize("model", MODELS, ids=["v1", "v2"])
def test_budget_boundary(model):
    plan = [step("llm_invoke")]  # V1: 5 ¢; V2: round(3.5) = 4 ¢
    cost = model.estimate({"plan": plan, "budget_cents": 0}).cost_cents
    assert run(model, *plan, budget=cost).feasible  # cost == budget is feasible
    assert run(model, *plan, budget=cost - 0.01).infeasible_reasons == ("over budget",)


@pytest.mark.parametrize("model", MODELS, ids=["v1", "v2"])
def test_risk_boundary_is_inclusive(model, monkeypatch):
    from costsim_analytics.engines.cost_models import base, batch

    plan = [step("shell_lite", iterations=2), step("http_call")]
    risk = run(model, *plan).cumulative_risk

    def threshold(value):  # the batch path reads batch's, estimate() base's
        monkeypatch.setattr(batch, "RISK_THRESHOLD", value)
        monkeypatch.setattr(base, "RISK_THRESHOLD", value)

    threshold(risk)  # risk == threshold: feasible
    assert run(model, *plan).feasible
    threshold(float(np.nextafter(risk, 0)))
    assert not run(model, *plan).feasible


@pytest.mark.parametrize("model", MODELS, ids=["v1", "v2"])
def test_empty_plan_is_valid_but_infeasible(model):
    est = run(model, budget=100)
    assert (est.cost_cents, est.duration_ms, est.cumulative_risk, est.confidence) == (0, 0, 0, 0)
    assert not est.feasible and est.infeasible_reasons == ("empty plan",)


def test_reasons_accumulate_in_order():
    est = run(V1, step("x", iterations=4), budget=1, permissions=[])  # 40 ¢; 1 - 0.8**4
    assert est.infeasible_reasons == ("over budget", "permission: x", "risk 0.59 > 0.5")


@pytest.mark.parametrize("model", MODELS, ids=["v1", "v2"])
def test_whole_floats_read_as_ints(model):
    as_ints = {"plan": [step("llm_invoke", 3), step("http_call", timeout_s=1)], "budget_cents": 9}
    as_floats = {
        "plan": [step("llm_invoke", 3.0), step("http_call", timeout_s=1.0)],
        "budget_cents": 9.0,
    }
    assert model.estimate(as_floats) == model.estimate(as_ints)
    a, b = model.estimate_batch([as_ints]), model.estimate_batch([as_floats])
    assert a.cost_cents.tolist() == b.cost_cents.tolist()


def test_any_mapping_and_tuple_are_accepted():
    plan_input = MappingProxyType(
        {"plan": (MappingProxyType({"skill": "kv_get"}),), "budget_cents": 1}
    )
    assert V1.estimate(plan_input).cost_cents == 0
    assert V1.estimate_batch([plan_input]).valid.tolist() == [True]


def test_params_a_skill_does_not_read_are_not_checked():
    assert run(V1, step("kv_get", prompt=5, url=[], timeout_s="x", command=None)).feasible


MALFORMED: list[tuple[object, str]] = [
    ([], "plan input must be a mapping"),
    (None, "plan input must be a mapping"),
    ({"budget_cents": 1}, "plan is required"),
    ({"plan": {"skill": "kv_get"}, "budget_cents": 1}, "plan must be a list"),
    ({"plan": "kv_get", "budget_cents": 1}, "plan must be a list"),
    ({"plan": ["kv_get"], "budget_cents": 1}, "plan[0] must be a mapping"),
    ({"plan": [{"params": {}}], "budget_cents": 1}, "plan[0].skill must be a string"),
    ({"plan": [{"skill": 5}], "budget_cents": 1}, "plan[0].skill must be a string"),
    ({"plan": [{"skill": ["a"]}], "budget_cents": 1}, "plan[0].skill must be a string"),
    ({"plan": [{"skill": "a", "params": []}], "budget_cents": 1}, "plan[0].params must be a"),
    ({"plan": [{"skill": "a"}]}, "budget_cents is required"),
    ({"plan": [], "budget_cents": None}, "budget_cents is required"),
    ({"plan": [], "budget_cents": -1}, "budget_cents must be a finite number >= 0"),
    ({"plan": [], "budget_cents": math.nan}, "budget_cents must be a finite number"),
    ({"plan": [], "budget_cents": math.inf}, "budget_cents must be a finite number"),
    ({"plan": [], "budget_cents": "10"}, "budget_cents must be a number"),
    ({"plan": [], "budget_cents": True}, "budget_cents must be a number"),
    ({"plan": [], "budget_cents": 1, "permissions": "kv_get"}, "permissions must be a list"),
    ({"plan": [], "budget_cents": 1, "permissions": [1]}, "permissions must be a list"),
]
for bad in [0, -1, 1.5, "2", True, math.nan, math.inf, 2**53 + 1]:
    MALFORMED.append(
        ({"plan": [{"skill": "a"}, step("b", bad)], "budget_cents": 1}, "plan[1].iterations")
    )
for skill, key, bad in [
    ("llm_invoke", "prompt", 5),
    ("http_call", "url", b"http://localhost"),
    ("http_call", "timeout_s", -1),
    ("http_call", "timeout_s", "5"),
    ("http_call", "timeout_s", math.nan),
    ("http_call", "timeout_s", False),
    ("shell_lite", "command", ["ls"]),
]:
    MALFORMED.append(
        ({"plan": [step(skill, **{key: bad})], "budget_cents": 1}, f"plan[0].params.{key}")
    )


@pytest.mark.parametrize(("plan_input", "message"), MALFORMED)
@pytest.mark.parametrize("model", MODELS, ids=["v1", "v2"])
def test_malformed_plans(model, plan_input, message):
    with pytest.raises(InvalidPlan, match="^" + re.escape(message)):
        model.estimate(plan_input)
    good = {"plan": [step("kv_get")], "budget_cents": 1}
    batch = model.estimate_batch([good, plan_input, good])
    assert batch.valid.tolist() == [True, False, True]
    assert batch.errors[0] is None and batch.errors[1].startswith(message)
    assert batch.feasible.tolist() == [True, False, True]
    for column in (batch.cost_cents, batch.duration_ms, batch.cumulative_risk):
        assert np.isnan(column[1]) and not np.isnan(column[[0, 2]]).any()


# ---- estimate_batch agrees with estimate --------------------------------------------------

PROMPT_CHARS = st.sampled_from([0, 1, 999, 1000, 1999, 2000, 2001, 3999, 4000, 4001, 6000, 7000])
NUMBER = st.one_of(st.integers(0, 100), st.floats(0, 100), st.integers(0, 100).map(float))
BAD: st.SearchStrategy[object] = st.sampled_from(
    [None, -1, 0, 1.5, "x", True, math.nan, [], {}, 2**60]
)


def rarely(draw, n):
    """True about once in n + 1 draws (hypothesis favours the bounds, so not at a bound)."""
    return draw(st.integers(0, n)) == n // 2


@st.composite
def params_for(draw, skill):
    params = {}
    if skill == "llm_invoke" and draw(st.booleans()):
        params["prompt"] = "p" * draw(st.one_of(PROMPT_CHARS, st.integers(0, 9000)))
    if skill == "http_call" and draw(st.booleans()):
        params["url"] = draw(
            st.sampled_from(["http://localhost:1", "http://127.0.0.1/", "https://x.test", ""])
        )
    if skill == "http_call" and draw(st.booleans()):
        params["timeout_s"] = draw(st.one_of(NUMBER, st.sampled_from([0.2, 0.5, 0.0])))
    if skill == "shell_lite" and draw(st.booleans()):
        params["command"] = "c" * draw(st.integers(0, 200))
    if rarely(draw, 30):  # now and then a wrong type for one of them
        params[draw(st.sampled_from(["prompt", "url", "timeout_s", "command"]))] = draw(BAD)
    return params


@st.composite
def steps(draw):
    skill = draw(st.sampled_from([*KNOWN_SKILLS, "mystery", ""]))
    s = {"skill": skill}
    if draw(st.booleans()):
        s["params"] = draw(params_for(skill))
    choice = draw(st.integers(0, 9))
    if choice < 3:
        s["iterations"] = draw(st.integers(1, 12))
    elif choice < 5:
        s["iterations"] = float(draw(st.integers(1, 12)))
    elif choice == 5:
        s["iterations"] = draw(st.sampled_from([10**6, 2**53, None]))
    if rarely(draw, 40):
        s[draw(st.sampled_from(["skill", "iterations", "params"]))] = draw(BAD)
    if rarely(draw, 20):
        return MappingProxyType(s)  # a Mapping that is not a dict
    return s


@st.composite
def plan_inputs(draw):
    plan = draw(st.lists(steps(), max_size=draw(st.sampled_from([3, 8, 40]))))
    plan_input = {"plan": plan, "budget_cents": draw(NUMBER)}
    if rarely(draw, 5):
        plan_input["permissions"] = draw(st.lists(st.sampled_from(KNOWN_SKILLS), max_size=6))
    roll = draw(st.integers(0, 40)) - 13  # hypothesis favours 0 and 40, not 13..15
    if roll == 0:
        return draw(st.sampled_from([None, [], "plan"]))
    if roll == 1:
        plan_input[draw(st.sampled_from(["plan", "budget_cents", "permissions"]))] = draw(BAD)
    if roll == 2:
        plan_input["plan"] = tuple(plan)
    return plan_input


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(plan_inputs(), max_size=25))
@pytest.mark.parametrize("model", MODELS, ids=["v1", "v2"])
def test_batch_agrees_with_estimate(model, samples):
    batch = model.estimate_batch(samples)
    assert len(batch) == len(samples)
    assert batch.steps is not None and batch.steps.skills is None
    starts = np.cumsum(batch.steps.n_steps) - batch.steps.n_steps
    for i, sample in enumerate(samples):
        try:
            est = model.estimate(sample)
        except InvalidPlan as exc:
            assert not batch.valid[i] and not batch.feasible[i]
            assert batch.errors[i] == str(exc)
            assert np.isnan([batch.cost_cents[i], batch.duration_ms[i]]).all()
            continue
        assert batch.valid[i] and batch.errors[i] is None
        # Same operations in the same order: equal to the last bit, not just within 1e-9.
        assert batch.cost_cents[i] == est.cost_cents
        assert batch.duration_ms[i] == est.duration_ms
        assert batch.cumulative_risk[i] == est.cumulative_risk
        assert batch.feasible[i] == est.feasible
        # The per-step breakdown the canary keeps is estimate()'s, step for step, bit for bit.
        window = slice(int(starts[i]), int(starts[i] + batch.steps.n_steps[i]))
        assert batch.steps.cost_cents[window].tolist() == [s.cost_cents for s in est.steps]
        assert batch.steps.latency_ms[window].tolist() == [s.latency_ms for s in est.steps]
        # Risk as it counts toward the plan's (V2 ignores step risks up to 0.02).
        floor = 0.02 if model is V2 else -1.0
        risks = [s.risk if s.risk > floor else 0.0 for s in est.steps]
        assert batch.steps.risk[window].tolist() == risks
        assert est.cumulative_risk == pytest.approx(
            1.0 - math.prod(1.0 - r for r in risks), abs=1e-12
        )
    shared = PlanBatch(samples)
    again = model.estimate_batch(shared)
    assert again.cost_cents.tobytes() == batch.cost_cents.tobytes()
    assert again.errors == batch.errors


def test_batch_of_nothing():
    for model in MODELS:
        batch = model.estimate_batch([])
        assert len(batch) == 0 and batch.cost_cents.dtype == np.float64


def test_v2_batch_sums_in_plan_order():
    # Found by search: in plan order the float sum is 85.49999999999997 (rounds to 85), while
    # numpy's pairwise np.sum gives 85.5 (rounds to 86). The batch must say 85, like estimate.
    skills = (
        "llm:625 e e m llm:1250 llm:1250 m llm:500 m e llm:500 e e llm:1000 llm:500 e m m m e m e "
        "e e"
    )
    plan = []
    for word in skills.split():
        name, _, chars = word.partition(":")
        skill = {"llm": "llm_invoke", "e": "email_send", "m": "mystery"}[name]
        plan.append(step(skill, prompt="p" * int(chars or 0)))
    plan_input = {"plan": plan, "budget_cents": 1000}
    costs = [s.cost_cents for s in V2.estimate(plan_input).steps]
    assert round(float(np.sum(costs))) == 86  # the trap
    assert V2.estimate(plan_input).cost_cents == 85
    assert V2.estimate_batch([plan_input]).cost_cents[0] == 85


# ---- load_cost_model -----------------------------------------------------------------------


class PluginModel:
    name = "v3"
    version = "3.0.0"

    def estimate(self, plan_input):
        return V1.estimate(plan_input)

    def estimate_batch(self, plan_inputs):
        return V1.estimate_batch(plan_inputs)


def plugin_factory():
    return PluginModel()


NOT_A_MODEL = object()


@pytest.fixture
def plugins(monkeypatch):
    def install(**targets):
        eps = [
            importlib.metadata.EntryPoint(name, f"{__name__}:{target}", ENTRY_POINT_GROUP)
            for name, target in targets.items()
        ]

        def entry_points(**kw):
            assert kw == {"group": ENTRY_POINT_GROUP}
            return importlib.metadata.EntryPoints(eps)

        monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)

    return install


def test_built_in_models():
    v1, v2 = load_cost_model("v1"), load_cost_model("v2")
    assert (v1.name, v1.version, v2.name, v2.version) == ("v1", "1.0.0", "v2", "2.0.0")
    assert isinstance(v1, CostModel) and isinstance(v2, CostModel)


@pytest.mark.parametrize("field", ["model", "baseline_model"])
def test_unknown_model_is_invalid_argument_on_the_callers_field(field, plugins):
    plugins()
    kwargs = {} if field == "model" else {"field": field}
    with pytest.raises(InvalidArgument) as exc:
        load_cost_model("v9", **kwargs)
    [violation] = exc.value.violations
    assert violation.field == field and "'v9'" in violation.description
    assert "v1, v2" in violation.description


@pytest.mark.parametrize("target", ["PluginModel", "plugin_factory"])
def test_entry_point_model(target, plugins):
    plugins(v3=target, v1="NOT_A_MODEL")
    assert available_cost_models() == ["v1", "v2", "v3"]
    model = load_cost_model("v3")
    assert isinstance(model, PluginModel)
    assert load_cost_model("v1").__class__ is V1CostModel  # built-ins win


@pytest.mark.parametrize(
    ("target", "message"),
    [("NOT_A_MODEL", "is not a CostModel"), ("missing_name", "failed to load")],
)
def test_broken_entry_point_is_failed_precondition(target, message, plugins):
    plugins(broken=target)
    with pytest.raises(FailedPrecondition, match=message):
        load_cost_model("broken")


@pytest.mark.parametrize("model", MODELS, ids=["v1", "v2"])
def test_batch_with_one_very_long_plan(model):
    llm = [step("llm_invoke", prompt="p" * n) for n in range(0, 9000, 3)]  # 3,000 steps
    samples = [{"plan": llm, "budget_cents": 10**5}] + [
        {"plan": [step("email_send"), step("kv_get", 2), step("x")], "budget_cents": 20}
    ] * 20
    batch = model.estimate_batch(samples)
    for i in (0, 1, 20):
        est = model.estimate(samples[i])
        assert (batch.cost_cents[i], batch.duration_ms[i]) == (est.cost_cents, est.duration_ms)
        assert batch.cumulative_risk[i] == est.cumulative_risk
