"""The golden engine: canonical JSONL and hashes, validation, the comparison and its verdict."""

import hashlib
import json
import math
from dataclasses import replace
from datetime import UTC, datetime

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from costsim_analytics.engines.canary.command import RunCanary, fingerprint, validate
from costsim_analytics.engines.canary.evaluation import (
    COMPARISONS_FILE,
    CanaryConfig,
    Sample,
    evaluate,
    sample_artifacts,
)
from costsim_analytics.engines.canary.synthetic import synthetic_samples
from costsim_analytics.engines.canonical import content_hash
from costsim_analytics.engines.cost_models import BatchEstimates, load_cost_model
from costsim_analytics.engines.errors import FailedPrecondition, InvalidArgument
from costsim_analytics.engines.golden import comparison as golden
from costsim_analytics.engines.golden.commands import CompareGolden
from costsim_analytics.engines.golden.comparison import (
    GoldenConfig,
    compare,
    judge_report,
)
from costsim_analytics.engines.golden.datasets import (
    GoldenDataset,
    GoldenSample,
    dataset_sha256,
    export_jsonl,
    parse_jsonl,
    prepare_dataset,
    promoted_samples,
)
from costsim_analytics.engines.golden.results import golden_from_json, golden_to_json
from costsim_analytics.engines.reports import report_from_json, report_to_json
from tests.factories import canary_report

NOW = datetime(2026, 11, 26, 6, 0, tzinfo=UTC)
PLAN = {"plan": [{"skill": "kv_get"}], "budget_cents": 10}


class KeyModel:
    """Cost = plan_input[key], feasible = plan_input[key + "_ok"]; no key: not estimable."""

    version = "test"

    def __init__(self, name, key):
        self.name = name
        self.key = key

    def estimate(self, plan_input):
        raise NotImplementedError

    def estimate_batch(self, plan_inputs):
        valid = np.array([self.key in p for p in plan_inputs], dtype=bool)
        return BatchEstimates(
            cost_cents=np.array([float(p.get(self.key, np.nan)) for p in plan_inputs]),
            duration_ms=np.where(valid, 1.0, np.nan),
            feasible=np.array([bool(p.get(self.key + "_ok", True)) for p in plan_inputs]) & valid,
            cumulative_risk=np.where(valid, 0.0, np.nan),
            valid=valid,
            errors=tuple(None if v else "no cost" for v in valid),
        )


CAND, BASE = KeyModel("cand", "c"), KeyModel("base", "b")


def dataset(rows, name="ref", version=3):
    """rows: (expected cost, expected feasible, plan input with the models' answers)."""
    samples = tuple(
        GoldenSample(f"s{i:03d}", plan, cost, ok) for i, (cost, ok, plan) in enumerate(rows)
    )
    return GoldenDataset(
        name,
        version,
        dataset_sha256(samples),
        "",
        "import",
        len(samples),
        True,
        NOW,
        samples=samples,
    )


# --- canonical JSONL ---------------------------------------------------------------------------


def test_export_is_canonical_sorted_and_round_trips_byte_for_byte():
    samples = [
        GoldenSample(
            "b",
            {"plan": [{"skill": "llm_invoke", "params": {"prompt": "é"}}], "budget_cents": 100.0},
            5.0,
            True,
            2000.0,
        ),
        GoldenSample("a", {"budget_cents": 2.5, "plan": []}, 0.0, False),
    ]
    body = export_jsonl(samples)
    assert body == (
        b'{"expected_cost_cents":0,"expected_feasible":false,"id":"a",'
        b'"plan_input":{"budget_cents":2.5,"plan":[]}}\n'
        b'{"expected_cost_cents":5,"expected_duration_ms":2000,"expected_feasible":true,"id":"b",'
        b'"plan_input":{"budget_cents":100,"plan":[{"params":{"prompt":"\\u00e9"},'
        b'"skill":"llm_invoke"}]}}\n'
    )
    again = prepare_dataset("x", "", "import", parse_jsonl(body.decode()))
    assert export_jsonl(again.samples) == body
    assert again.sha256 == dataset_sha256(samples) == hashlib.sha256(body).hexdigest()


def test_hash_ignores_order_formatting_and_whole_floats():
    a = [
        GoldenSample("1", {"plan": [], "budget_cents": 10}, 3, True),
        GoldenSample("2", PLAN, 0.5, False),
    ]
    text = (
        '{"plan_input": {"budget_cents": 10.0, "plan": [{"skill": "kv_get"}]}, "id": "2",\t'
        '"expected_cost_cents": 0.5, "expected_feasible": false}\n\n'
        '{"id": "1", "expected_cost_cents": 3.0, "expected_feasible": true,'
        ' "plan_input": {"plan": [], "budget_cents": 10}}\n'
    )
    b = prepare_dataset("x", "", "import", parse_jsonl(text))
    assert b.sha256 == dataset_sha256(a)
    assert [s.id for s in b.samples] == ["1", "2"]
    assert dataset_sha256([replace(a[0], expected_cost_cents=3.5), a[1]]) != b.sha256


def test_ids_sort_by_code_point():
    ids = ["b", "B", "a10", "a9", "é", "_"]
    samples = [GoldenSample(i, PLAN, 0, True) for i in ids]
    lines = export_jsonl(samples).decode().splitlines()
    assert [json.loads(line)["id"] for line in lines] == sorted(ids)


def test_parse_jsonl_refuses_what_it_cannot_read():
    with pytest.raises(InvalidArgument) as exc:
        parse_jsonl('{"id": "a", "expected_cost_cents": 1}\nnot json\n')
    assert exc.value.violations[0].field == "line 2"
    with pytest.raises(InvalidArgument, match="unknown fields"):
        parse_jsonl('{"id": "a", "expected_cost_cents": 1, "cost": 2}')
    with pytest.raises(InvalidArgument, match="line 1"):
        parse_jsonl("[1, 2]")


# --- validation --------------------------------------------------------------------------------


def test_every_bad_sample_field_is_named_by_its_path():
    samples = [
        GoldenSample("ok", PLAN, 1, True),
        GoldenSample("bad-plan", {"plan": "nope", "budget_cents": 1}, 1, True),
        GoldenSample("", PLAN, 1, True),
        GoldenSample("neg", PLAN, -1, True),
        GoldenSample("nan", PLAN, math.nan, True, math.inf),
        GoldenSample("ok", PLAN, 2, True),
    ]
    with pytest.raises(InvalidArgument) as exc:
        prepare_dataset("ref", "", "import", samples)
    fields = [v.field for v in exc.value.violations]
    assert fields == [
        "samples[1].plan_input",
        "samples[2].id",
        "samples[3].expected_cost_cents",
        "samples[4].expected_cost_cents",
        "samples[4].expected_duration_ms",
        "samples[5].id",
    ]
    assert "duplicate of samples[0].id" in exc.value.violations[-1].description
    assert "plan must be a list" in exc.value.violations[0].description


@pytest.mark.parametrize(
    ("name", "description", "samples", "field"),
    [
        ("", "", [GoldenSample("a", PLAN, 0, True)], "name"),
        ("has space", "", [GoldenSample("a", PLAN, 0, True)], "name"),
        ("-dash-first", "", [GoldenSample("a", PLAN, 0, True)], "name"),
        ("x" * 129, "", [GoldenSample("a", PLAN, 0, True)], "name"),
        ("ok", "d" * 1025, [GoldenSample("a", PLAN, 0, True)], "description"),
        ("ok", "", [], "samples"),
    ],
)
def test_names_descriptions_and_empty_sets_are_refused(name, description, samples, field):
    with pytest.raises(InvalidArgument) as exc:
        prepare_dataset(name, description, "import", samples)
    assert [v.field for v in exc.value.violations] == [field]


def test_prepare_normalises_plan_numbers():
    new = prepare_dataset(
        "ok", "", "import", [GoldenSample("a", {**PLAN, "budget_cents": 10.0}, 1.0, True)]
    )
    assert new.samples[0].plan_input["budget_cents"] == 10
    assert isinstance(new.samples[0].plan_input["budget_cents"], int)


def test_canary_command_validates_and_fingerprints_the_golden_name():
    with pytest.raises(InvalidArgument) as exc:
        validate(RunCanary(golden_dataset="no spaces"))
    assert [v.field for v in exc.value.violations] == ["golden_dataset"]
    # Requests without a golden dataset keep the digest they had before the field existed.
    assert fingerprint(RunCanary(seed=3)) == content_hash(
        {
            "sample_count": 0,
            "lookback_days": 0,
            "drift_threshold": None,
            "outlier_threshold": None,
            "outlier_max_pct": None,
            "major_drift_max_pct": None,
            "min_samples": None,
            "median_delta_tolerance": None,
            "baseline_model": "",
            "candidate_model": "",
            "samples": [],
            "seed": 3,
        }
    )
    assert fingerprint(RunCanary(seed=3, golden_dataset="ref")) != fingerprint(RunCanary(seed=3))


# --- the comparison ----------------------------------------------------------------------------


def test_errors_summary_and_confusion():
    d = dataset(
        [
            (100, True, {"c": 110, "b": 100}),  # relative error exactly 0.10: within
            (100, True, {"c": 111, "b": 100}),  # 0.11: outside
            (0, True, {"c": 0.5, "b": 3}),  # expected 0: divided by 1, 0.5 is outside
            (50, False, {"c": 50, "c_ok": True, "b": 60, "b_ok": False}),  # a flip
            (20, True, {"c": 20, "c_ok": False, "b": 20}),  # a flip the other way
        ]
    )
    c = compare(d, CAND, BASE, GoldenConfig())
    s = c.candidate
    assert (s.samples, s.invalid_samples, s.within_tolerance) == (5, 0, 3)
    assert s.within_tolerance_share == 3 / 5
    relative = [0.10, 0.11, 0.5, 0.0, 0.0]
    assert s.mean_relative_error == pytest.approx(np.mean(relative), rel=1e-15)
    assert s.p90_relative_error == pytest.approx(np.percentile(relative, 90), rel=1e-15)
    assert s.max_absolute_error == 11.0
    assert s.mean_absolute_error == pytest.approx(21.5 / 5)
    f = s.feasibility
    assert (
        f.expected_feasible_predicted_feasible,
        f.expected_feasible_predicted_infeasible,
        f.expected_infeasible_predicted_feasible,
        f.expected_infeasible_predicted_infeasible,
        f.flips,
    ) == (3, 1, 1, 0, 2)
    assert c.baseline.within_tolerance == 3 and c.baseline.feasibility.flips == 0
    assert not c.passed
    assert [(r.code, r.metric, r.comparator) for r in c.reasons] == [
        ("GOLDEN_COMPARISON_FAILED", "golden_within_tolerance_share", "<"),
        ("GOLDEN_COMPARISON_FAILED", "golden_feasibility_flips", ">"),
    ]
    assert (c.reasons[0].observed, c.reasons[0].threshold) == (0.6, 0.95)
    assert (c.reasons[1].observed, c.reasons[1].threshold) == (2.0, 0.0)
    assert "golden ref v3" in c.reasons[0].message
    # Against the baseline: s000 and s001 farther, s002 and s003 closer, s004 tied.
    assert (c.closer_samples, c.farther_samples, c.tied_samples) == (2, 2, 1)
    assert (c.dataset_name, c.dataset_version, c.dataset_sha256) == ("ref", 3, d.sha256)


def test_worst_samples_put_flips_first_then_the_largest_errors():
    d = dataset(
        [
            (100, True, {"c": 150, "b": 100}),
            (100, True, {"c": 100, "c_ok": False, "b": 100}),
            (100, True, {"c": 300, "b": 100}),
            (100, True, {"c": 100, "b": 100}),
            (100, True, {"b": 100}),  # the candidate cannot estimate it
        ]
    )
    c = compare(d, CAND, BASE, GoldenConfig(worst_samples=4))
    assert [w.id for w in c.worst_samples] == ["s004", "s001", "s002", "s000"]
    unestimated, flip, big = c.worst_samples[:3]
    assert unestimated.candidate_cost_cents is None and unestimated.error == "no cost"
    assert unestimated.relative_error is None and not unestimated.within_tolerance
    assert flip.expected_feasible and not flip.candidate_feasible
    assert (big.candidate_cost_cents, big.absolute_error, big.relative_error) == (300, 200, 2.0)
    assert (big.baseline_cost_cents, big.baseline_relative_error) == (100, 0.0)
    # Within tolerance is about cost: the flip s001 costs what it should.
    assert c.candidate.invalid_samples == 1 and c.candidate.within_tolerance == 2
    assert c.candidate.within_tolerance_share == 2 / 5  # the unestimated sample counts against
    assert c.candidate.mean_relative_error == pytest.approx((0.5 + 0 + 2 + 0) / 4)


@pytest.mark.parametrize(
    ("cand", "base", "direction"),
    [(101, 120, "toward"), (130, 110, "away"), (105, 95, "unchanged")],
)
def test_direction_against_the_baseline(cand, base, direction):
    c = compare(dataset([(100, True, {"c": cand, "b": base})]), CAND, BASE, GoldenConfig())
    assert c.direction == direction
    expected = abs(cand - 100) / 100 - abs(base - 100) / 100
    assert c.mean_relative_error_delta == pytest.approx(expected)


def test_thresholds_are_overridable_and_validated():
    d = dataset([(100, True, {"c": 100, "b": 100})] * 19 + [(100, True, {"c": 200, "b": 100})])
    assert compare(d, CAND, BASE, GoldenConfig()).passed  # 19 / 20 = 0.95 is enough
    strict = golden.resolve_config(CompareGolden("ref", min_share=0.96), GoldenConfig())
    assert not compare(d, CAND, BASE, strict).passed
    loose = golden.resolve_config(CompareGolden("ref", tolerance=1.0), strict)
    assert compare(d, CAND, BASE, loose).passed
    assert golden.resolve_config(CompareGolden("ref"), GoldenConfig(tolerance=0.2)).tolerance == 0.2
    with pytest.raises(InvalidArgument) as exc:
        golden.resolve_config(
            CompareGolden(
                "ref", tolerance=-1, min_share=1.5, max_feasibility_flips=-1, worst_samples=1001
            ),
            GoldenConfig(),
        )
    assert [v.field for v in exc.value.violations] == [
        "tolerance",
        "min_share",
        "max_feasibility_flips",
        "worst_samples",
    ]


def reference_compare(d, candidate, baseline, tolerance):
    """The same summary, one sample at a time, in plain Python."""
    out = {}
    for model in (candidate, baseline):
        rel, abs_, within, flips = [], [], 0, 0
        for s in d.samples:
            e = model.estimate(s.plan_input)
            a = abs(e.cost_cents - s.expected_cost_cents)
            r = a / max(s.expected_cost_cents, 1)
            rel.append(r)
            abs_.append(a)
            within += r <= tolerance
            flips += e.feasible != s.expected_feasible
        out[model.name] = (within, flips, sum(rel) / len(rel), max(abs_), sorted(rel))
    return out


@settings(deadline=None, max_examples=30)
@given(
    st.lists(st.tuples(st.floats(0, 200), st.booleans()), min_size=1, max_size=40),
    st.integers(0, 119),
)
def test_vectorised_comparison_matches_a_python_loop(expectations, offset):
    plans = synthetic_samples()
    samples = tuple(
        GoldenSample(f"g{i}", plans[(offset + i) % len(plans)][1], cost, ok)
        for i, (cost, ok) in enumerate(expectations)
    )
    d = GoldenDataset(
        "p", 1, dataset_sha256(samples), "", "import", len(samples), True, NOW, samples=samples
    )
    v1, v2 = load_cost_model("v1"), load_cost_model("v2")
    c = compare(d, v2, v1, GoldenConfig())
    ref = reference_compare(d, v2, v1, 0.10)
    for summary in (c.candidate, c.baseline):
        within, flips, mean, max_abs, ordered = ref[summary.model]
        assert summary.within_tolerance == within
        assert summary.feasibility.flips == flips
        assert summary.mean_relative_error == pytest.approx(mean, rel=1e-12, abs=1e-15)
        assert summary.max_absolute_error == max_abs
        assert summary.p90_relative_error == pytest.approx(
            np.percentile(ordered, 90), rel=1e-12, abs=1e-15
        )


# --- the canary report -------------------------------------------------------------------------


def test_a_failed_comparison_fails_a_passing_report_and_only_adds_to_others():
    failing = compare(dataset([(100, True, {"c": 200, "b": 100})]), CAND, BASE, GoldenConfig())
    passing = compare(dataset([(100, True, {"c": 100, "b": 100})]), CAND, BASE, GoldenConfig())
    ok = canary_report(0)  # status pass
    judged = judge_report(ok, failing)
    assert (judged.status, judged.passed) == ("fail", False)
    assert judged.reasons[-1].code == "GOLDEN_COMPARISON_FAILED"
    assert judged.failure_reasons[-1] == failing.reasons[0].message
    assert judged.golden_comparison is failing
    assert judge_report(ok, passing).status == "pass"
    assert judge_report(ok, passing).golden_comparison is passing
    error = canary_report(2)  # status error stays error
    assert judge_report(error, failing).status == "error"


def test_comparison_survives_json_and_the_report_artifact():
    c = compare(
        dataset([(100, True, {"c": 150, "b": 100}), (5, False, {"b": 1})]),
        CAND,
        BASE,
        GoldenConfig(),
    )
    data = golden_to_json(c)
    text = json.dumps(data, allow_nan=False)  # JSONB has no NaN: absent numbers are null
    assert golden_from_json(json.loads(text)) == c
    assert golden_to_json(None) is None and golden_from_json(None) is None
    report = judge_report(canary_report(0), c)
    back = report_from_json(json.loads(json.dumps(report_to_json(report))))
    assert back.golden_comparison == c and back.reasons == report.reasons


# --- promotion ---------------------------------------------------------------------------------


def canary_run(samples):
    v1, v2 = load_cost_model("v1"), load_cost_model("v2")
    ev = evaluate(
        samples,
        v1,
        v2,
        CanaryConfig(min_samples=1),
        run_id="r",
        timestamp=NOW,
        seed=1,
        sample_source="explicit",
    )
    return sample_artifacts(ev)[COMPARISONS_FILE]


def test_comparisons_carry_plan_inputs_and_promote_with_baseline_outputs():
    plans = synthetic_samples()[:10]
    samples = [Sample(i, p) for i, p in plans] + [Sample("broken", {"plan": 3})]
    body = canary_run(samples)
    rows = [json.loads(line) for line in body.decode().splitlines()]
    assert [r["plan_input"] for r in rows] == [s.plan_input for s in samples]
    promoted = promoted_samples("r", body)
    assert [s.id for s in promoted] == [i for i, _ in plans]  # the broken one is left out
    v1 = load_cost_model("v1")
    for s, (_, plan) in zip(promoted, plans, strict=True):
        e = v1.estimate(plan)
        assert (s.plan_input, s.expected_cost_cents, s.expected_feasible) == (
            plan,
            e.cost_cents,
            e.feasible,
        )
        assert s.expected_duration_ms == e.duration_ms


def test_promotion_refuses_old_artifacts_duplicates_and_empty_runs():
    body = canary_run([Sample(i, p) for i, p in synthetic_samples()[:3]])
    old = b"".join(
        json.dumps({k: v for k, v in json.loads(line).items() if k != "plan_input"}).encode()
        + b"\n"
        for line in body.splitlines()
    )
    with pytest.raises(FailedPrecondition, match="predates"):
        promoted_samples("r", old)
    twice = canary_run([Sample("same", PLAN), Sample("same", PLAN)])
    with pytest.raises(FailedPrecondition, match="two samples"):
        promoted_samples("r", twice)
    with pytest.raises(FailedPrecondition, match="no estimated sample"):
        promoted_samples("r", canary_run([Sample("x", {"plan": 1})]))


def test_a_run_whose_baseline_estimates_exceed_a_golden_sample_is_not_promotable():
    # 2**53 iterations of a long prompt: the baseline prices it above 1e15 cents. Promoting it
    # was INVALID_ARGUMENT naming samples[0].expected_cost_cents, no field of the request.
    huge = {
        "plan": [{"skill": "llm_invoke", "params": {"prompt": "x" * 1000}, "iterations": 2**53}],
        "budget_cents": 10,
    }
    body = canary_run([Sample("fine", PLAN), Sample("huge", huge)])
    with pytest.raises(FailedPrecondition, match=r"'huge'.*beyond") as exc:
        promoted_samples("r", body)
    assert exc.value.reason == "RUN_NOT_PROMOTABLE"
