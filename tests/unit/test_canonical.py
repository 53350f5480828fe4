import dataclasses
import datetime
import enum
import hashlib
import json
import math
import random
import re
import uuid
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from costsim_analytics.engines import canonical
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


# Anything a caller's dict may hold, whole floats, NaN and tuples included: the fast path must
# either answer exactly as the walk does, or step aside (None).
any_numbers = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.sampled_from([1.0, -0.0, 2.0**53, 2.0**53 + 2, 1e16, 1e-05])
    | st.text()
    | st.sampled_from(["v1.0", "1.0", "e+5"]),
    lambda children: (
        st.lists(children, max_size=4)
        | st.tuples(children)
        | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


@given(st.dictionaries(st.text(max_size=8), any_numbers, max_size=5))
def test_serialising_without_the_walk_matches_the_walk(value):
    from costsim_analytics.engines.canonical import dumps_by_key, dumps_by_key_if_normal

    fast = dumps_by_key_if_normal(value)
    try:
        slow = dumps_by_key(normalize_numbers(value))
    except ValueError:  # NaN or an infinity: only the walk may say so
        assert fast is None
        return
    assert fast is None or fast == slow


def test_serialising_without_the_walk_steps_aside():
    from costsim_analytics.engines.canonical import dumps_by_key_if_normal

    assert dumps_by_key_if_normal({"a": {"b": 0.5, "c": [1, "x"]}}) == (
        '{"a":{"b":0.5,"c":[1,"x"]}}',
        {"a": '{"b":0.5,"c":[1,"x"]}'},
    )
    needs_walk: list[dict[Any, Any]] = [
        {"a": 1.0},
        {"a": [-0.0]},
        {"a": math.nan},
        {1: 2},
        {"a": object()},
    ]
    for value in needs_walk:
        assert dumps_by_key_if_normal(value) is None


# What orjson serialises and json does not, or differently: the guarded fast encoder must give
# the canonical encoder's text exactly, or refuse exactly when it refuses.
class Colour(enum.Enum):
    RED = 1


class Level(enum.IntEnum):
    HIGH = 3


class Name(str):
    pass


@dataclasses.dataclass
class Point:
    x: int


awkward_leaves = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**64), max_value=2**64)
    | st.floats()
    | st.floats(min_value=1e-10, max_value=1e-3)
    | st.floats(min_value=-1e-3, max_value=-1e-10)
    | st.floats(min_value=1e15, max_value=1e17)
    | st.sampled_from([1e-05, 6.3e-08, 1e-10, 0.0001, 1e16, 1.5e16, 5e-324, -0.0, "\x7f", "é"])
    | st.text()
    | st.text(alphabet=st.characters(max_codepoint=127))
    | st.builds(Name, st.text(max_size=4))
    | st.sampled_from(
        [Colour.RED, Level.HIGH, uuid.UUID(int=7), Point(1), datetime.date(2026, 1, 1)]
    )
)
awkward_values = st.recursive(
    awkward_leaves,
    lambda children: (
        st.lists(children, max_size=4)
        | st.tuples(children)
        | st.dictionaries(st.text(max_size=8), children, max_size=4)
        | st.dictionaries(st.integers(0, 3), children, max_size=2)
    ),
    max_leaves=20,
)


def _reference(value: Any) -> str | type[Exception]:
    encoder = json.JSONEncoder(sort_keys=True, separators=(",", ":"), allow_nan=False)
    try:
        return encoder.encode(value)
    except (TypeError, ValueError) as exc:
        return type(exc)


@settings(max_examples=500, deadline=None)
@given(awkward_values)
def test_the_fast_encoder_writes_what_json_writes(value):
    pytest.importorskip("orjson")
    assert canonical.orjson is not None
    expected = _reference(value)
    got = canonical._fast(value, plain=False)
    if isinstance(expected, str):
        assert got is None or got == expected
        assert canonical.dumps(value) == expected
    else:
        assert got is None
        with pytest.raises(expected):
            canonical.dumps(value)


plain_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.sampled_from([1e-05, 6.3e-08, 1e-10, 1e16, -0.0, "\x7f", "é", math.nan, math.inf])
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=500, deadline=None)
@given(plain_values)
def test_the_fast_encoder_of_plain_values_writes_what_json_writes(value):
    pytest.importorskip("orjson")
    expected = _reference(value)
    got = canonical._fast(value, plain=True)
    assert got == expected if got is not None else True
    if not isinstance(expected, str):
        assert got is None


def test_every_finite_double_of_the_differing_exponents_steps_aside_or_matches():
    pytest.importorskip("orjson")
    rng = random.Random(7)
    for _ in range(20_000):
        x = rng.uniform(1, 10) * 10.0 ** rng.randint(-12, 20) * rng.choice([1, -1])
        got = canonical._fast([x], plain=True)
        assert got is None or got == f"[{x!r}]"


def test_the_fast_encoder_is_used_where_it_can_be():
    pytest.importorskip("orjson")
    assert canonical._fast({"b": [0.5, "x"], "a": 1}, plain=False) == '{"a":1,"b":[0.5,"x"]}'
    for differs in ({"a": 1e-05}, {"a": 6.3e-08}, {"a": "é"}, {"a": "\x7f"}, {"a": math.nan}):
        assert canonical._fast(differs, plain=True) is None
    for refused in ({"a": uuid.UUID(int=1)}, {"a": Colour.RED}, {"a": (1,)}):
        assert canonical._fast(refused, plain=False) is None
    assert canonical._fast({"a": Level.HIGH}, plain=False) == '{"a":3}'  # as json writes it


def test_without_orjson_the_json_encoder_answers(monkeypatch):
    monkeypatch.setattr(canonical, "orjson", None)
    assert canonical._fast({"a": 1}, plain=True) is None
    assert canonical_json({"b": "é", "a": [1.5, 2.0, 1e-05]}) == (
        '{"a":[1.5,2,1e-05],"b":"\\u00e9"}'
    )


def _reference_by_key(obj: dict[Any, Any]) -> tuple[str, dict[Any, str]] | type[Exception]:
    encoder = json.JSONEncoder(sort_keys=True, separators=(",", ":"), allow_nan=False)
    try:
        parts = {key: encoder.encode(value) for key, value in obj.items()}
        body = ",".join(
            f"{json.encoder.encode_basestring_ascii(k)}:{parts[k]}" for k in sorted(parts)
        )
    except (TypeError, ValueError) as exc:
        return type(exc)
    return "{" + body + "}", parts


@settings(max_examples=400, deadline=None)
@given(
    st.dictionaries(st.text(max_size=8), awkward_values, max_size=4)
    | st.dictionaries(st.integers(0, 3), awkward_values, max_size=2)
)
def test_the_fast_encoder_by_key_writes_what_json_writes(obj):
    pytest.importorskip("orjson")
    expected = _reference_by_key(obj)
    got = canonical._fast_by_key(obj, plain=False)
    if isinstance(expected, tuple):
        assert got is None or got == expected
    else:
        assert got is None


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(st.text(max_size=8), plain_values, max_size=4))
def test_the_fast_encoder_by_key_of_plain_values_writes_what_json_writes(obj):
    pytest.importorskip("orjson")
    expected = _reference_by_key(obj)
    got = canonical._fast_by_key(obj, plain=True)
    if isinstance(expected, tuple):
        assert got is None or got == expected
    else:
        assert got is None


json_texts = (
    st.builds(json.dumps, plain_values.filter(lambda v: _reference(v) is not ValueError))
    | st.builds(lambda v: json.dumps(v, indent=1), awkward_values.map(str))
    | st.from_regex(r"\A-?(0|[1-9][0-9]{0,40})(\.[0-9]{1,40})?([eE][-+]?[0-9]{1,4})?\Z")
    | st.sampled_from(
        [
            '{"a":1,"b":2,"a":3}',
            '"\\ud800"',
            '"\\udc00\\ud800"',
            "1e400",
            "-1e400",
            "NaN",
            "[Infinity]",
            "18446744073709551616",
            "-9223372036854775809",
            '{"a": 123456789012345678901}',
            "\ufeff{}",
            "{}\x0c",
            ' \t\n\r{"a" : [ ] } ',
            "[1,]",
            '"\x01"',
            '"\x7f"',
        ]
    )
    | st.text(max_size=12)
)


@settings(max_examples=800, deadline=None)
@given(json_texts)
def test_loads_plain_gives_what_json_gives(text):
    decoder = json.JSONDecoder(parse_constant=canonical._no_constants)
    try:
        expected = decoder.decode(text)
    except ValueError as exc:
        with pytest.raises(ValueError, match=re.escape(str(exc))) as refused:
            canonical.loads_plain(text)
        assert str(refused.value) == str(exc)
        return
    got = canonical.loads_plain(text)
    assert json.dumps(got) == json.dumps(expected)
    assert list(_types(got)) == list(_types(expected))


def _types(value: Any) -> Any:
    if isinstance(value, dict):
        for key, item in value.items():
            yield key
            yield from _types(item)
    elif isinstance(value, list):
        for item in value:
            yield from _types(item)
    yield type(value)
