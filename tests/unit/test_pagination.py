import base64
import json
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from costsim_analytics.engines.errors import InvalidArgument
from costsim_analytics.engines.pagination import (
    Cursor,
    check_window,
    decode_token,
    encode_token,
    filter_fingerprint,
    resolve_page_size,
)

FP = filter_fingerprint("provenance", {"tenant_id": "t1"})


@given(
    st.datetimes(
        timezones=st.just(UTC), min_value=datetime(1970, 1, 2), max_value=datetime(9000, 1, 1)
    ),
    st.integers(min_value=0, max_value=2**63 - 1),
)
def test_token_round_trip(ts, row_id):
    token = encode_token("provenance", FP, Cursor(ts, row_id))
    assert decode_token(token, "provenance", FP) == Cursor(ts, row_id)
    assert "=" not in token


def test_token_is_bound_to_filters_and_kind():
    token = encode_token("provenance", FP, Cursor(datetime(2026, 1, 1, tzinfo=UTC), 5))
    other = filter_fingerprint("provenance", {"tenant_id": "t2"})
    with pytest.raises(InvalidArgument, match="different query") as exc:
        decode_token(token, "provenance", other)
    assert exc.value.violations[0].field == "page_token"
    with pytest.raises(InvalidArgument, match="different query"):
        decode_token(token, "canary_reports", FP)


def test_fingerprint_depends_on_every_filter_value():
    start = datetime(2026, 1, 1, tzinfo=UTC)
    base: dict[str, object] = {"a": "x", "start": start}
    assert filter_fingerprint("k", base) == filter_fingerprint("k", dict(base))
    assert filter_fingerprint("k", base) != filter_fingerprint("k", {**base, "a": "y"})
    shifted = {**base, "start": start + timedelta(microseconds=1)}
    assert filter_fingerprint("k", base) != filter_fingerprint("k", shifted)


def _b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    "token",
    [
        "not a token",
        "%%%%",
        _b64(json.dumps([1, 2])),
        _b64(f"1|provenance|{FP}|1000|5"),  # an old version
        _b64(f"2|provenance|{FP}|yesterday|5"),
        _b64(f"2|provenance|{FP}|1000|five"),
        _b64(f"2|provenance|{FP}|1000"),
        _b64(f"2|provenance|{FP}|1000|5|6"),
        _b64(f"2|provenance|{FP}|{10**30}|5"),
    ],
)
def test_malformed_tokens_are_invalid_argument(token):
    with pytest.raises(InvalidArgument) as exc:
        decode_token(token, "provenance", FP)
    assert exc.value.reason == "INVALID_PAGE_TOKEN"


def test_page_size_rules():
    assert resolve_page_size(0) == 100
    assert resolve_page_size(7) == 7
    assert resolve_page_size(10**6) == 10_000
    assert resolve_page_size(60, maximum=50) == 50
    with pytest.raises(InvalidArgument, match="page_size"):
        resolve_page_size(-1)


def test_window_rules():
    t = datetime(2026, 1, 1, tzinfo=UTC)
    check_window(t, t)
    check_window(None, t)
    with pytest.raises(InvalidArgument) as exc:
        check_window(t + timedelta(seconds=1), t)
    assert [v.field for v in exc.value.violations] == ["start_time", "end_time"]
