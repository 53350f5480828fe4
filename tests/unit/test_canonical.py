import hashlib
import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from costsim_analytics.engines.canonical import canonical_json, content_hash, normalize_numbers

# JSON as a caller builds it: ints where it means whole numbers.
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**53), max_value=2**53)
    | st.floats(allow_nan=False, allow_infinity=False).filter(lambda f: not f.is_integer())
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


def as_struct_numbers(value):
    """What google.protobuf.Struct does to a value: every number becomes a double."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, list):
        return [as_struct_numbers(v) for v in value]
    return {k: as_struct_numbers(v) for k, v in value.items()}


def caller_hash(value):
    text = json.dumps(value, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


@given(json_values)
def test_hash_through_struct_equals_callers_own_hash(value):
    assert content_hash(as_struct_numbers(value)) == caller_hash(value)


def test_whole_double_hashes_as_integer():
    assert canonical_json({"budget_cents": 1000.0}) == '{"budget_cents":1000}'
    assert content_hash({"budget_cents": 1000.0}) == caller_hash({"budget_cents": 1000})


def test_keys_sorted_and_non_ascii_escaped():
    assert canonical_json({"b": "é", "a": [1.5, 2.0]}) == '{"a":[1.5,2],"b":"\\u00e9"}'


def test_huge_whole_doubles_stay_floats():
    assert normalize_numbers(2.0**60) == 2.0**60
    assert isinstance(normalize_numbers(2.0**60), float)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_numbers_are_rejected(bad):
    with pytest.raises(ValueError, match="finite"):
        canonical_json({"x": [bad]})


@given(st.dictionaries(st.text(max_size=6), json_values, max_size=5))
def test_dumps_by_key_equals_dumps_and_its_parts(value):
    from costsim_analytics.engines.canonical import dumps, dumps_by_key

    normal = normalize_numbers(value)
    whole, parts = dumps_by_key(normal)
    assert whole == dumps(normal)
    assert parts == {key: dumps(item) for key, item in normal.items()}


@given(json_values)
def test_loads_normalises_like_the_struct_path(value):
    from costsim_analytics.engines.canonical import loads

    text = json.dumps(as_struct_numbers(value))
    assert canonical_json(loads(text)) == canonical_json(value)
