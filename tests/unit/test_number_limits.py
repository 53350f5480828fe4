"""Numbers and instants outside what the columns hold are refused, naming the field."""

from __future__ import annotations

import base64
from dataclasses import replace
from datetime import UTC, datetime

import pytest

from costsim_analytics.engines.errors import InvalidArgument
from costsim_analytics.engines.golden.datasets import GoldenSample, prepare_dataset, validate_lookup
from costsim_analytics.engines.pagination import (
    MAX_EPOCH_SECONDS,
    MIN_EPOCH_SECONDS,
    check_instant,
    decode_token,
)
from costsim_analytics.engines.provenance import prepare_batch
from tests.factories import provenance_input

NOW = datetime(2026, 11, 26, tzinfo=UTC)
PLAN = {"plan": [], "budget_cents": 100.0}


def fields(exc: pytest.ExceptionInfo[InvalidArgument]) -> list[str]:
    return [v.field for v in exc.value.violations]


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"runtime_ms": 2**31}, "runtime_ms"),
        ({"runtime_ms": 2**63}, "runtime_ms"),
        ({"v1_cost": 1e300}, "v1_cost"),
        ({"v2_cost": float("inf")}, "v2_cost"),
    ],
)
def test_record_numbers_beyond_their_columns_are_refused(overrides, field):
    with pytest.raises(InvalidArgument) as exc:
        prepare_batch([replace(provenance_input(0), **overrides)], max_batch=1, now=NOW)
    assert fields(exc) == [f"records[0].{field}"]


def test_record_numbers_at_the_limits_are_accepted():
    rec = replace(provenance_input(0), runtime_ms=2**31 - 1, v1_cost=1e15, v2_cost=0.0)
    [row] = prepare_batch([rec], max_batch=1, now=NOW)
    assert row.runtime_ms == 2**31 - 1


@pytest.mark.parametrize(
    ("seconds", "nanos"),
    [(MAX_EPOCH_SECONDS + 1, 0), (MIN_EPOCH_SECONDS - 1, 0), (0, -1), (0, 10**9), (2**62, 0)],
)
def test_instants_no_datetime_holds_are_refused_by_field(seconds, nanos):
    with pytest.raises(InvalidArgument) as exc:
        check_instant(seconds, nanos, "end_time")
    assert fields(exc) == ["end_time"]


def test_the_first_and_last_instants_are_accepted():
    check_instant(MIN_EPOCH_SECONDS, 0, "start_time")
    check_instant(MAX_EPOCH_SECONDS, 999_999_999, "end_time")


def forged(micros: int, row_id: int, fp: str = "f" * 16) -> str:
    raw = f"2|provenance|{fp}|{micros}|{row_id}"
    return base64.urlsafe_b64encode(raw.encode()).rstrip(b"=").decode()


@pytest.mark.parametrize(
    ("micros", "row_id"), [(0, 2**63), (0, 2**64 + 5), (0, -1), (10**20, 1), (-(10**20), 1)]
)
def test_forged_tokens_out_of_range_are_invalid_page_tokens(micros, row_id):
    with pytest.raises(InvalidArgument) as exc:
        decode_token(forged(micros, row_id), "provenance", "f" * 16)
    assert exc.value.reason == "INVALID_PAGE_TOKEN"
    assert fields(exc) == ["page_token"]


def test_largest_row_id_still_decodes():
    assert decode_token(forged(0, 2**63 - 1), "provenance", "f" * 16).id == 2**63 - 1


def test_golden_numbers_and_versions_beyond_their_columns_are_refused():
    samples = [GoldenSample("a", PLAN, 1e16, True, None), GoldenSample("b", PLAN, 1.0, True, 1e300)]
    with pytest.raises(InvalidArgument) as exc:
        prepare_dataset("ref", "", "import", samples)
    assert fields(exc) == ["samples[0].expected_cost_cents", "samples[1].expected_duration_ms"]
    with pytest.raises(InvalidArgument) as exc:
        validate_lookup("ref", 2**31)
    assert fields(exc) == ["version"]
