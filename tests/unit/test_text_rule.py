"""The one text and JSON rule (engines/text.py), as each engine's validation applies it."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime

import pytest

from costsim_analytics.engines.canary.command import RunCanary, validate
from costsim_analytics.engines.canary.evaluation import Sample
from costsim_analytics.engines.cost_models import load_cost_model
from costsim_analytics.engines.drift import DriftStatsQuery, validate_drift_query
from costsim_analytics.engines.errors import InvalidArgument
from costsim_analytics.engines.golden.datasets import GoldenSample, prepare_dataset
from costsim_analytics.engines.idempotency import validate_request_id
from costsim_analytics.engines.provenance import ProvenanceFilter, prepare_batch, validate_filter
from costsim_analytics.engines.reports import validate_run_id
from costsim_analytics.engines.text import (
    DEFAULT_MAX_JSON_DEPTH,
    NUL,
    SURROGATE,
    json_text_too_deep,
    normalize_json,
    text_problem,
)
from tests.factories import provenance_input

NOW = datetime(2026, 11, 26, tzinfo=UTC)
BAD_TEXT = [("nul", "a\x00b", NUL), ("high", "a\ud800b", SURROGATE), ("low", "\udc00", SURROGATE)]
PLAN = {"plan": [], "budget_cents": 100.0}


def nested(depth: int) -> dict[str, object]:
    value: dict[str, object] = {}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


def nested_text(depth: int) -> str:
    return '{"a":' * (depth - 1) + "{}" + "}" * (depth - 1)


def violations(exc: pytest.ExceptionInfo[InvalidArgument]) -> dict[str, str]:
    return {v.field: v.description for v in exc.value.violations}


@pytest.mark.parametrize(("kind", "value", "problem"), BAD_TEXT)
def test_text_problem_names_nul_and_unpaired_surrogates(kind, value, problem):
    assert text_problem(value) == problem


def test_text_problem_accepts_ordinary_and_astral_text():
    assert text_problem("") is None
    assert text_problem("héllo 😀 \u2028") is None


def test_normalize_json_checks_depth_keys_and_strings_without_recursion():
    assert normalize_json(nested(DEFAULT_MAX_JSON_DEPTH), max_depth=32) == nested(32)
    with pytest.raises(ValueError, match="at most 32 levels"):
        normalize_json(nested(33), max_depth=32)
    with pytest.raises(ValueError, match="at most 32 levels"):  # far past the recursion limit
        normalize_json(nested(50_000), max_depth=32)
    with pytest.raises(ValueError, match="NUL"):
        normalize_json({"ok": [{"k\x00": 1}]}, max_depth=32)
    with pytest.raises(ValueError, match="surrogates"):
        normalize_json({"ok": ["x", "\ud800"]}, max_depth=32)
    assert normalize_json({"k\x00": 1}, max_depth=32, texts=False) == {"k\x00": 1}
    assert normalize_json([1.0, {"b": [2.0, 2.5]}], max_depth=3) == [1, {"b": [2, 2.5]}]


def test_json_text_depth_ignores_brackets_in_strings():
    assert not json_text_too_deep(nested_text(32), max_depth=32)
    assert json_text_too_deep(nested_text(33), max_depth=32)
    assert json_text_too_deep("[" * 5000, max_depth=32)
    assert not json_text_too_deep(json.dumps({"s": "[{" * 100 + '\\"[['}), max_depth=2)


@pytest.mark.parametrize("name", ["run_id", "tenant_id", "model_version", "commit_sha"])
@pytest.mark.parametrize(("kind", "value", "problem"), BAD_TEXT)
def test_record_text_fields_refuse_bad_text_by_path(name, kind, value, problem):
    records = [provenance_input(i) for i in range(4)]
    records[3] = replace(records[3], **{name: value})
    with pytest.raises(InvalidArgument) as exc:
        prepare_batch(records, max_batch=10, now=NOW)
    assert violations(exc) == {f"records[3].{name}": problem}


@pytest.mark.parametrize(
    "payload_json",
    ['{"input": {}, "output": {"k": "a\\u0000"}}', '{"input": {"\\u0000": 1}, "output": {}}'],
)
def test_payload_json_refuses_escaped_nul_in_keys_and_values(payload_json):
    rec = replace(provenance_input(0), payload=None, payload_json=payload_json)
    with pytest.raises(InvalidArgument) as exc:
        prepare_batch([rec], max_batch=10, now=NOW)
    assert violations(exc) == {"records[0].payload_json": NUL}


def test_payload_json_refuses_raw_nul_even_with_hashes_given():
    rec = replace(
        provenance_input(0, input_hash="a" * 64, output_hash="b" * 64),
        payload=None,
        payload_json='{"input": "\x00"}',
    )
    with pytest.raises(InvalidArgument) as exc:
        prepare_batch([rec], max_batch=10, now=NOW)
    assert violations(exc) == {"records[0].payload_json": NUL}


@pytest.mark.parametrize("depth", [33, 5_000])
def test_payload_json_depth_is_scanned_before_parsing(depth):
    rec = replace(provenance_input(0), payload=None, payload_json=nested_text(depth))
    with pytest.raises(InvalidArgument) as exc:
        prepare_batch([rec], max_batch=10, now=NOW)
    assert violations(exc) == {"records[0].payload_json": "must nest at most 32 levels deep"}


def test_payload_struct_depth_is_limited_and_configurable():
    deep = {"input": nested(31), "output": {}}  # 32 levels with the payload itself
    [row] = prepare_batch([replace(provenance_input(0), payload=deep)], max_batch=1, now=NOW)
    assert row.payload == deep
    with pytest.raises(InvalidArgument) as exc:
        prepare_batch(
            [replace(provenance_input(0), payload=deep)], max_batch=1, now=NOW, max_depth=10
        )
    assert violations(exc) == {"records[0].payload": "must nest at most 10 levels deep"}


@pytest.mark.parametrize("name", ["tenant_id", "run_id"])
def test_provenance_filter_refuses_bad_text(name):
    with pytest.raises(InvalidArgument) as exc:
        validate_filter(ProvenanceFilter(**{name: "x\x00"}))  # type: ignore[arg-type]
    assert violations(exc) == {name: NUL}


def test_drift_run_and_request_ids_refuse_bad_text():
    with pytest.raises(InvalidArgument) as exc:
        validate_drift_query(DriftStatsQuery(tenant_id="t\ud800"))
    assert violations(exc) == {"tenant_id": SURROGATE}
    with pytest.raises(InvalidArgument) as exc:
        validate_run_id("run\x00")
    assert violations(exc) == {"run_id": NUL}
    with pytest.raises(InvalidArgument) as exc:
        validate_request_id("req\x00")
    assert violations(exc) == {"request_id": NUL}


def test_canary_samples_and_models_refuse_bad_text_and_deep_plans():
    samples = (
        Sample("ok", PLAN),
        Sample("s\x00", PLAN),
        Sample("deep", {"plan": [nested(40)]}),
        Sample("nul", {"plan": [], "note": "\x00"}),
    )
    with pytest.raises(InvalidArgument) as exc:
        validate(RunCanary(samples=samples, candidate_model="v2\x00"))
    assert violations(exc) == {
        "candidate_model": NUL,
        "samples[1].id": NUL,
        "samples[2].plan_input": "must nest at most 32 levels deep",
        "samples[3].plan_input": NUL,
    }


def test_golden_samples_and_description_refuse_bad_text_and_deep_plans():
    samples = [
        GoldenSample("a\ud800", PLAN, 1.0, True, 1.0),
        GoldenSample("b", {**PLAN, "x": nested(40)}, 1.0, True, 1.0),
        GoldenSample("c", {**PLAN, "\x00": 1}, 1.0, True, 1.0),
    ]
    with pytest.raises(InvalidArgument) as exc:
        prepare_dataset("ref", "desc\x00", "import", samples)
    assert violations(exc) == {
        "description": NUL,
        "samples[0].id": SURROGATE,
        "samples[1].plan_input": "must nest at most 32 levels deep",
        "samples[2].plan_input": NUL,
    }


def test_unknown_model_names_and_plan_values_are_echoed_cut():
    with pytest.raises(InvalidArgument) as exc:
        load_cost_model("m" * 10_000, field="candidate_model")
    assert len(exc.value.message) < 200 and "…" in exc.value.message
    with pytest.raises(InvalidArgument) as exc:
        plan = {**PLAN, "plan": [{"skill": "s", "iterations": "x" * 10_000}]}
        prepare_dataset("ref", "", "import", [GoldenSample("a", plan, 1.0, True)])
    [violation] = exc.value.violations
    assert len(violation.description) < 200
