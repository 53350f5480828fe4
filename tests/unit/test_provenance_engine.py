import json
from dataclasses import replace
from datetime import UTC, datetime

import pytest

from costsim_analytics.engines.canonical import content_hash
from costsim_analytics.engines.errors import InvalidArgument
from costsim_analytics.engines.idempotency import validate_request_id
from costsim_analytics.engines.provenance import (
    MAX_PAYLOAD_BYTES,
    ProvenanceFilter,
    ProvenanceInput,
    WriteBatch,
    compute_cost_delta,
    prepare_batch,
    validate_filter,
)
from costsim_analytics.engines.provenance_digest import command_fingerprint, command_fingerprint_v1
from tests.factories import provenance_input

NOW = datetime(2026, 11, 26, tzinfo=UTC)


def fields_of(exc: pytest.ExceptionInfo[InvalidArgument]) -> list[str]:
    return [v.field for v in exc.value.violations]


def prepare(*records, max_batch=1000):
    return prepare_batch(list(records), max_batch=max_batch, now=NOW)


def test_valid_record_is_prepared_with_delta_hashes_and_server_time():
    [row] = prepare(provenance_input(0, v1_cost=10.0, v2_cost=12.5))
    assert row.cost_delta == 2.5
    assert row.created_at == NOW
    assert row.input_hash == content_hash(row.payload["input"])
    assert row.output_hash == content_hash(row.payload["output"])
    assert row.payload["input"]["budget_cents"] == 1000


def test_struct_doubles_are_normalised_before_hashing():
    payload = {"input": {"plan": [], "budget_cents": 1000.0}, "output": {"cost": 3.0}}
    [row] = prepare(provenance_input(0, payload=payload))
    assert row.payload_json == '{"input":{"budget_cents":1000,"plan":[]},"output":{"cost":3}}'
    assert row.input_hash == content_hash({"plan": [], "budget_cents": 1000})


def test_given_hashes_are_kept():
    h = "a" * 64
    [row] = prepare(provenance_input(0, input_hash=h, output_hash=h, payload=None))
    assert (row.input_hash, row.output_hash) == (h, h)


@pytest.mark.parametrize(
    ("v1", "v2", "delta"),
    [(None, 1.0, None), (1.0, None, None), (None, None, None), (3.0, 1.0, -2.0)],
)
def test_cost_delta_only_when_both_costs(v1, v2, delta):
    assert compute_cost_delta(v1, v2) == delta


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"variant_slug": "v3"}, "records[0].variant_slug"),
        ({"variant_slug": ""}, "records[0].variant_slug"),
        ({"source": "prod"}, "records[0].source"),
        ({"v1_cost": -0.01}, "records[0].v1_cost"),
        ({"v2_cost": float("nan")}, "records[0].v2_cost"),
        ({"v1_cost": float("inf")}, "records[0].v1_cost"),
        ({"runtime_ms": -1}, "records[0].runtime_ms"),
        ({"input_hash": "A" * 64}, "records[0].input_hash"),
        ({"output_hash": "abc"}, "records[0].output_hash"),
        ({"run_id": ""}, "records[0].run_id"),
        ({"run_id": "r" * 257}, "records[0].run_id"),
        ({"tenant_id": "t" * 257}, "records[0].tenant_id"),
        ({"commit_sha": "c" * 257}, "records[0].commit_sha"),
        ({"id_set": True}, "records[0].id"),
        ({"cost_delta_set": True}, "records[0].cost_delta"),
        ({"created_at_set": True}, "records[0].created_at"),
        (
            {"payload": {"input": {}, "output": {}, "blob": "x" * MAX_PAYLOAD_BYTES}},
            "records[0].payload",
        ),
        ({"payload": {"input": {}, "output": {"c": float("nan")}}}, "records[0].payload"),
        ({"payload": {"input": {}, "output": {}, "status": "done"}}, "records[0].payload.status"),
        ({"payload": {"output": {}}}, "records[0].input_hash"),
        ({"payload": {"input": {}}}, "records[0].output_hash"),
    ],
)
def test_each_rule_names_the_field(overrides, field):
    with pytest.raises(InvalidArgument) as exc:
        prepare(provenance_input(0, **overrides))
    assert fields_of(exc) == [field]


def test_every_bad_record_is_reported_with_its_index():
    with pytest.raises(InvalidArgument) as exc:
        prepare(
            provenance_input(0),
            provenance_input(1, v1_cost=-1.0),
            provenance_input(2),
            provenance_input(3, source="x"),
        )
    assert fields_of(exc) == ["records[1].v1_cost", "records[3].source"]


def test_batch_size_limits():
    with pytest.raises(InvalidArgument) as empty:
        prepare()
    assert empty.value.reason == "EMPTY_BATCH"
    with pytest.raises(InvalidArgument) as big:
        prepare(*[provenance_input(i) for i in range(3)], max_batch=2)
    assert big.value.reason == "BATCH_TOO_LARGE"
    assert fields_of(big) == ["records"]


def test_request_id_length():
    validate_request_id("k" * 128)
    with pytest.raises(InvalidArgument) as exc:
        validate_request_id("k" * 129)
    assert fields_of(exc) == ["request_id"]


def test_fingerprint_is_the_content_not_the_request_id():
    a = WriteBatch([provenance_input(0)], request_id="a")
    b = WriteBatch([provenance_input(0)], request_id="b")
    c = WriteBatch([provenance_input(0, v2_cost=99.0)], request_id="a")
    struct = WriteBatch([provenance_input(0, payload={"k": 1.0}, payload_json="")])
    text = WriteBatch([provenance_input(0, payload=None, payload_json='{"k":1.0}')])
    assert command_fingerprint(a) == command_fingerprint(b)
    assert command_fingerprint(a) != command_fingerprint(c)
    # A Struct payload and its canonical JSON text are the same content.
    assert command_fingerprint(struct) == command_fingerprint(text)


def _pinned_batch() -> WriteBatch:
    return WriteBatch(
        [
            ProvenanceInput(
                run_id="run-1",
                tenant_id="acme",
                variant_slug="v2",
                source="sandbox",
                model_version="2.0.0",
                commit_sha="abc123",
                v1_cost=10.0,
                v2_cost=12.5,
                payload={"input": {"budget_cents": 100.0, "plan": ["é"]}, "output": {}},
                runtime_ms=7,
            ),
            ProvenanceInput(
                run_id="run-2",
                variant_slug="v1",
                source="manual",
                payload_json='{"input": {"a": 1}, "output": {"b": "x"}}',
                input_hash="a" * 64,
                output_hash="b" * 64,
            ),
        ],
        "k",
    )


def test_the_first_digest_formula_is_unchanged():
    # Stored under keys written before the v2 formula: it must never change.
    expected = "dedb5644bbc068ff03393fe4d502e2c2d18b7b2436e074629dcd89bb6306df44"
    assert command_fingerprint_v1(_pinned_batch()) == expected


def test_the_current_digest_is_tagged_and_fits_the_column():
    digest = command_fingerprint(_pinned_batch())
    assert digest.startswith("v2") and len(digest) == 64
    assert all(c in "0123456789abcdef" for c in digest[2:])
    assert digest == "v2452fed9d2e005c341cb15a159d071e9a329a60a8bb4aff85412ac0749beb33"


def test_the_current_digest_tells_apart_what_a_plain_join_would_not():
    def digest(**overrides: object) -> str:
        return command_fingerprint(WriteBatch([provenance_input(0, **overrides)]))

    # Text moved from one field to its neighbour, a cost given or not, a flag set.
    assert digest(run_id="ab", tenant_id="c") != digest(run_id="a", tenant_id="bc")
    assert digest(run_id="1:x", tenant_id="") != digest(run_id="1", tenant_id="x")
    assert digest(v1_cost=None) != digest(v1_cost=0.0)
    assert digest(v1_cost=-0.0) != digest(v1_cost=0.0)
    assert digest(v1_cost=1.0, v2_cost=2.0) != digest(v1_cost=2.0, v2_cost=1.0)
    assert digest(id_set=True) != digest(cost_delta_set=True)
    one = WriteBatch([provenance_input(0), provenance_input(1)])
    other = WriteBatch([provenance_input(1), provenance_input(0)])
    assert command_fingerprint(one) != command_fingerprint(other)


def test_filter_validation():
    validate_filter(ProvenanceFilter(variant_slug="v1", source="manual", input_hash="0" * 64))
    with pytest.raises(InvalidArgument) as exc:
        validate_filter(ProvenanceFilter(variant_slug="x", source="y", input_hash="z"))
    assert fields_of(exc) == ["variant_slug", "source", "input_hash"]


# --- payload_json, the fast alternative to a Struct payload -------------------------------------


def as_json_input(i=0, **overrides):
    record = provenance_input(i, **overrides)
    return replace(record, payload=None, payload_json=json.dumps(record.payload, indent=1))


def test_payload_json_hashes_like_the_struct_payload():
    struct_row = prepare(provenance_input(3))[0]
    json_row = prepare(as_json_input(3))[0]
    assert (json_row.input_hash, json_row.output_hash) == (
        struct_row.input_hash,
        struct_row.output_hash,
    )
    assert json_row.payload_json == struct_row.payload_json  # canonical when hashing was needed


def test_payload_json_with_given_hashes_is_stored_as_sent():
    h = "b" * 64
    record = replace(as_json_input(1), input_hash=h, output_hash=h)
    [row] = prepare(record)
    assert row.payload_json == record.payload_json
    assert row.payload["input"]["budget_cents"] == 1000


@pytest.mark.parametrize(
    ("text", "description"),
    [
        ("[1, 2]", "must be a JSON object"),
        ("{not json", "Expecting"),
        ('{"input": {}, "output": {}, "x": NaN}', "finite"),
        ('{"input": {}, "output": {}, "x": "a\\u0000b"}', "NUL"),
        ('{"input": {}, "output": {}, "x": "\\ud800"}', "surrogates"),
        ('{"input": {}, "output": {}, "x": "' + "y" * MAX_PAYLOAD_BYTES + '"}', "at most"),
    ],
)
def test_bad_payload_json_names_the_field(text, description):
    h = "c" * 64
    for hashes in ({}, {"input_hash": h, "output_hash": h}):
        record = replace(provenance_input(0, payload=None, payload_json=text), **hashes)  # type: ignore[arg-type]
        with pytest.raises(InvalidArgument) as exc:
            prepare(record)
        [violation] = exc.value.violations
        assert violation.field == "records[0].payload_json"
        assert description in violation.description


def test_surrogate_pairs_and_non_ascii_are_fine():
    text = json.dumps({"input": {"p": "😀 é"}, "output": {}})
    [row] = prepare(provenance_input(0, payload=None, payload_json=text))
    assert row.payload["input"]["p"] == "😀 é"


def test_payload_and_payload_json_together_are_refused():
    with pytest.raises(InvalidArgument) as exc:
        prepare(provenance_input(0, payload_json="{}"))
    assert fields_of(exc) == ["records[0].payload_json"]


def test_struct_payload_with_nul_is_refused():
    with pytest.raises(InvalidArgument) as exc:
        prepare(provenance_input(0, payload={"input": {"p": "a\x00"}, "output": {}}))
    assert fields_of(exc) == ["records[0].payload"]
