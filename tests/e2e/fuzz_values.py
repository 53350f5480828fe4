"""Hypothesis strategies for values of every kind a request field holds.

Scalars of every protobuf type biased to their edges (extreme ints, NaN, infinities, the
smallest denormal), text with NUL, long and astral strings, JSON values and ``Struct``
messages nested up to beyond protobuf's limit (built without recursion), Timestamps outside
0001-9999 or with nanos out of range, any message walked from its descriptor, and the
plausible values requests are built from: plans (the synthetic ones, and plans at the edges
of what the cost models read), payloads, and ``payload_json`` texts valid, deep, invalid or
with ``\\ud800`` and ``\\u0000`` escapes (a protobuf string cannot hold an unpaired
surrogate, JSON text can spell one). ``fuzz_requests.py`` builds the requests.
"""

from __future__ import annotations

import json
import math
from typing import Any

from google.protobuf import struct_pb2, timestamp_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message_factory import GetMessageClass
from hypothesis import strategies as st

from costsim_analytics.engines.canary.synthetic import synthetic_samples
from costsim_analytics.engines.pagination import MAX_EPOCH_SECONDS, MIN_EPOCH_SECONDS
from costsim_analytics.engines.provenance import PAYLOAD_STATUSES

PLANS = [plan for _, plan in synthetic_samples()]
NOW_S = 1_800_000_000  # 2027: records get the server's clock, filters cover it or not

Msg = Any  # any generated message: the strategies set fields by descriptor
Json = Any

# --- scalars -------------------------------------------------------------------------------------

INT32_EDGES = [0, 1, -1, 2, 30, 100, 10_000, 100_000, 100_001, 2**31 - 1, -(2**31)]
INT64_EDGES = [0, 1, -1, 2**31, 2**53 + 1, 2**63 - 1, -(2**63)]
UINT_EDGES = [0, 1, 2**32 - 1, 2**63, 2**64 - 1]
DOUBLE_EDGES = [
    0.0,
    -0.0,
    0.5,
    1.0,
    100.0,
    1e15,
    1e16,
    1e308,
    -1e308,
    5e-324,
    math.nan,
    math.inf,
    -math.inf,
    -1.0,
]


def edges_or(values: list[Any], full: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(st.sampled_from(values), full)


INT32 = edges_or(INT32_EDGES, st.integers(-(2**31), 2**31 - 1))
INT64 = edges_or(INT32_EDGES + INT64_EDGES, st.integers(-(2**63), 2**63 - 1))
UINT32 = edges_or([0, 1, 2**32 - 1], st.integers(0, 2**32 - 1))
UINT64 = edges_or(UINT_EDGES, st.integers(0, 2**64 - 1))
DOUBLE = edges_or(DOUBLE_EDGES, st.floats())
FLOAT = edges_or(DOUBLE_EDGES[:6], st.floats(width=32))

LONG_LENGTHS = [129, 257, 1025, 10_000, 70_000]
TEXT = st.one_of(
    st.text(max_size=12),
    st.sampled_from(["", "\x00", "a\x00", " ", "v1", "v2", "canary", "sandbox", "é", "😀"]),
    st.text(st.characters(codec="utf-8"), max_size=80),
    st.builds(
        lambda c, n: c * n, st.sampled_from(["x", "é", "😀", "\x00"]), st.sampled_from(LONG_LENGTHS)
    ),
)

# --- JSON values and Struct -------------------------------------------------------------------

UNSET = object()  # a Value with no kind set: what a careless client sends for null
JSON_LEAF = st.one_of(
    st.none(),
    st.booleans(),
    st.floats(),
    st.integers(-(2**60), 2**60).map(float),
    st.text(max_size=10),
    st.sampled_from(["\x00", "\u2028", "😀", "x" * 300]),
)


def json_values(leaf: st.SearchStrategy[Json]) -> st.SearchStrategy[Json]:
    return st.recursive(
        leaf,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
        max_leaves=12,
    )


JSON_VALUE = json_values(JSON_LEAF)
STRUCT_VALUE = json_values(JSON_LEAF | st.just(UNSET))  # only a Struct can leave a value unset
# Around COSTSIM_MAX_JSON_DEPTH (32), protobuf's Struct limit (~33 in a request) and far past.
DEPTHS = st.sampled_from([2, 30, 31, 32, 33, 34, 40, 50, 120])


def nested(depth: int, kind: str = "dict", leaf: Json = None) -> Json:
    """A JSON value ``depth`` levels deep, built without recursion."""
    value: Json = {} if leaf is None else leaf
    for i in range(depth - 1):
        use = kind if kind != "mixed" else ("dict", "list")[i % 2]
        value = {"a": value} if use == "dict" else [value]
    return value


DEEP_JSON = st.builds(nested, DEPTHS, st.sampled_from(["dict", "list", "mixed"]))


def fill_value(target: struct_pb2.Value, value: Json) -> None:
    """Set a ``Value`` from a Python JSON value, without recursion (for deep values)."""
    stack: list[tuple[struct_pb2.Value, Json]] = [(target, value)]
    while stack:
        slot, item = stack.pop()
        if isinstance(item, dict):
            fields = slot.struct_value.fields
            slot.struct_value.SetInParent()
            stack.extend((fields[str(k)], v) for k, v in item.items())
        elif isinstance(item, list):
            values = slot.list_value.values
            slot.list_value.SetInParent()
            stack.extend((values.add(), v) for v in item)
        elif item is UNSET:
            pass  # created empty by the map or list access above
        elif item is None:
            slot.null_value = struct_pb2.NULL_VALUE
        elif isinstance(item, bool):
            slot.bool_value = item
        elif isinstance(item, int | float):
            slot.number_value = float(item)
        else:
            slot.string_value = str(item)


def struct_of(value: Json) -> struct_pb2.Struct:
    holder = struct_pb2.Value()
    fill_value(holder, value if isinstance(value, dict) else {"value": value})
    return holder.struct_value


STRUCT = st.one_of(STRUCT_VALUE, DEEP_JSON, st.builds(lambda v: {"input": v}, DEEP_JSON)).map(
    struct_of
)


def timestamp(seconds: int, nanos: int) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos)


SECONDS = st.one_of(
    st.sampled_from(
        [
            MIN_EPOCH_SECONDS - 1,
            MIN_EPOCH_SECONDS,
            0,
            NOW_S,
            MAX_EPOCH_SECONDS,
            MAX_EPOCH_SECONDS + 1,
            253_402_300_800,
            2**63 - 1,
            -(2**63),
        ]
    ),
    st.integers(-(2**63), 2**63 - 1),
    st.integers(1_700_000_000, 2_000_000_000),
)
NANOS = edges_or([0, 999_999_999, 1_000_000_000, -1, 2**31 - 1, -(2**31)], st.integers(0, 10**9))
TIMESTAMP = st.builds(timestamp, SECONDS, NANOS)

# --- any message, walked from its descriptor --------------------------------------------------

_SCALARS: dict[int, st.SearchStrategy[Any]] = {
    FieldDescriptor.TYPE_DOUBLE: DOUBLE,
    FieldDescriptor.TYPE_FLOAT: FLOAT,
    FieldDescriptor.TYPE_INT32: INT32,
    FieldDescriptor.TYPE_SINT32: INT32,
    FieldDescriptor.TYPE_SFIXED32: INT32,
    FieldDescriptor.TYPE_INT64: INT64,
    FieldDescriptor.TYPE_SINT64: INT64,
    FieldDescriptor.TYPE_SFIXED64: INT64,
    FieldDescriptor.TYPE_UINT32: UINT32,
    FieldDescriptor.TYPE_FIXED32: UINT32,
    FieldDescriptor.TYPE_UINT64: UINT64,
    FieldDescriptor.TYPE_FIXED64: UINT64,
    FieldDescriptor.TYPE_BOOL: st.booleans(),
    FieldDescriptor.TYPE_STRING: TEXT,
    FieldDescriptor.TYPE_BYTES: st.binary(max_size=20),
}


def any_value(fd: FieldDescriptor, depth: int = 0) -> st.SearchStrategy[Any]:
    """Any single value of field ``fd`` (one item, for a repeated field)."""
    if fd.type == FieldDescriptor.TYPE_MESSAGE:
        assert fd.message_type is not None
        name = fd.message_type.full_name
        if name == "google.protobuf.Struct":
            return STRUCT
        if name == "google.protobuf.Timestamp":
            return TIMESTAMP
        return any_message(fd.message_type, depth + 1)
    if fd.type == FieldDescriptor.TYPE_ENUM:
        assert fd.enum_type is not None
        known = [v.number for v in fd.enum_type.values]
        return st.one_of(st.sampled_from(known), st.sampled_from([-1, 99, 2**31 - 1]), INT32)
    return _SCALARS[fd.type]


def set_field(msg: Msg, fd: FieldDescriptor, value: Any) -> None:
    """``msg.<fd> = value`` for any kind of field (a list for a repeated one)."""
    target = getattr(msg, fd.name)
    if fd.is_repeated:
        del target[:]
        for item in value:
            if fd.type == FieldDescriptor.TYPE_MESSAGE:
                target.add().CopyFrom(item)
            else:
                target.append(item)
    elif fd.type == FieldDescriptor.TYPE_MESSAGE:
        target.CopyFrom(value)
    else:
        setattr(msg, fd.name, value)


def field_value(fd: FieldDescriptor, depth: int = 0) -> st.SearchStrategy[Any]:
    if fd.is_repeated:
        return st.lists(any_value(fd, depth), max_size=3 if depth else 5)
    return any_value(fd, depth)


@st.composite
def any_message(draw: st.DrawFn, descriptor: Descriptor, depth: int = 0) -> Msg:
    """A message of type ``descriptor`` with any of its fields set to any value."""
    msg = GetMessageClass(descriptor)()
    if depth > 2:
        return msg
    for fd in descriptor.fields:
        if draw(st.booleans()):
            set_field(msg, fd, draw(field_value(fd, depth)))
    return msg


# --- plausible values ------------------------------------------------------------------------


def once_in(odds: int) -> st.SearchStrategy[bool]:
    """True about once in ``odds`` draws, shrinking to False.

    (Not ``integers(0, odds - 1) == 0``: hypothesis favours the bounds of a range, and 0
    shrinks first, so that would be far more often than once in ``odds``.)
    """
    return st.sampled_from([False] * (odds - 1) + [True])


def mostly(
    good: st.SearchStrategy[Any], bad: st.SearchStrategy[Any], odds: int = 16
) -> st.SearchStrategy[Any]:
    """``good``, and ``bad`` once in ``odds``: a plausible request should mostly stay plausible."""
    return st.tuples(once_in(odds), good, bad).map(lambda t: t[2] if t[0] else t[1])


STEP_CHANGES: list[tuple[str, Json]] = [
    ("iterations", 0),
    ("iterations", -1),
    ("iterations", 2**53),
    ("iterations", 2**53 + 2),
    ("iterations", 1.5),
    ("iterations", 1e300),
    ("iterations", "3"),
    ("iterations", None),
    ("skill", 7),
    ("skill", ""),
    ("skill", "LLM_INVOKE"),
    ("params", []),
    ("params", None),
    ("params", {"prompt": "p" * 60_000}),
    ("params", {"prompt": 5}),
    ("params", {"url": "http://localhost\x7f", "timeout_s": -1}),
    ("params", {"url": "https://x", "timeout_s": 1e308}),
    ("params", {"command": ["ls"]}),
    # With the plan input, its plan, the step and params: 32 levels (the limit), and 33.
    ("params", {"deep": nested(28)}),
    ("params", {"deep": nested(29)}),
]
PLAN_CHANGES: list[tuple[str, Json]] = [
    ("budget_cents", 0),
    ("budget_cents", -1),
    ("budget_cents", 1e308),
    ("budget_cents", "100"),
    ("budget_cents", None),
    ("permissions", []),
    ("permissions", ["llm_invoke"]),
    ("permissions", "llm_invoke"),
    ("plan", []),
    ("plan", {}),
    ("plan", [1, None]),
    ("plan", [{"skill": "llm_invoke", "params": {"prompt": "x"}}] * 500),
    # Valid, and priced beyond the 1e15 cents a golden sample may expect.
    ("plan", [{"skill": "llm_invoke", "params": {"prompt": "x" * 1000}, "iterations": 2**53}]),
]


def changed_plan(plan: dict[str, Json], change: tuple[str, Json], in_step: bool) -> dict[str, Json]:
    """A synthetic plan with one key of its first step, or of itself, set to an edge value."""
    key, value = change
    if not in_step:
        return {**plan, key: value}
    steps = [dict(step) for step in plan["plan"]]
    steps[0][key] = value
    return {**plan, "plan": steps}


# The synthetic plans, and now and then one at the edge of what the cost models read.
# Valid numbers at the edges of their ranges: shares (0 to 1) and limits (0 or more).
TINY = [5e-324, 1e-300, 1e-17]
SHARE = st.one_of(st.floats(0, 1), st.sampled_from([0.0, 1.0, *TINY, 1 - 1e-16]))
LIMIT = st.one_of(st.floats(0, 2), st.sampled_from([0.0, *TINY, 1e15, 1e308]))
AMOUNT = st.one_of(st.floats(0, 5000), st.sampled_from([0.0, *TINY, 1e15]))

PLAN = st.sampled_from(PLANS) | st.one_of(
    st.builds(changed_plan, st.sampled_from(PLANS), st.sampled_from(STEP_CHANGES), st.just(True)),
    st.builds(changed_plan, st.sampled_from(PLANS), st.sampled_from(PLAN_CHANGES), st.just(False)),
)
HEX = st.text("0123456789abcdef", min_size=64, max_size=64)


def payload(plan: Json, cost: float, status: str) -> dict[str, Json]:
    budget = plan.get("budget_cents")
    feasible = isinstance(budget, int | float) and cost < budget
    output = {"estimated_cost_cents": cost, "feasible": feasible}
    return {"input": plan, "output": output, "status": status}


def storable(value: Json) -> bool:
    """Whether a JSON value keeps the text and number rules (no NUL, finite numbers)."""
    text = json.dumps(value)
    return "\\u0000" not in text and "NaN" not in text and "Infinity" not in text


def extra(value: dict[str, Json], more: Json) -> dict[str, Json]:
    """``value`` with more (valid) JSON beside its input: deep, unicode, large numbers."""
    return {**value, "output": {**value["output"], "extra": more}}


PAYLOAD = (
    st.builds(payload, PLAN, st.floats(0, 2000), st.sampled_from(sorted(PAYLOAD_STATUSES)))
    | st.builds(
        extra,
        st.builds(payload, PLAN, st.floats(0, 2000), st.just("success")),
        st.one_of(
            JSON_VALUE.filter(storable),
            st.builds(nested, st.sampled_from([28, 29, 30]), st.sampled_from(["dict", "list"])),
            st.sampled_from([2**53 + 1.0, 1e308, -1e-308, "😀\u2028", [[[]]], {"": {"": None}}]),
        ),
    )
    | st.builds(
        # A successful record whose input is no plan, or a plan nested to the limit (32 levels
        # with the payload and "input"): canary runs sample such inputs from provenance.
        payload,
        st.one_of(
            st.dictionaries(TEXT, JSON_VALUE, max_size=3).filter(storable),
            st.builds(
                lambda plan, deep: {**plan, "deep": deep}, PLAN, st.builds(nested, st.just(30))
            ),
        ),
        st.floats(0, 2000),
        st.just("success"),
    )
)
BAD_JSON_TEXT = st.sampled_from(
    [
        "",
        "{",
        "[]",
        "null",
        "1",
        '"x"',
        "NaN",
        '{"input": {}, "output": {"x": NaN}}',
        '{"input": {}, "output": {"x": Infinity}}',
        '{"input": {}, "output": {"x": 1e400}}',
        '{"input": {}, "output": {"x": -0}}',
        '{"input": {"n": 123456789012345678901234567890}, "output": {}}',
        '\ufeff{"input": {}, "output": {}}',
        '{"input": {}, "input": {"a": 1}, "output": {}}',
        '{"input": {"k": "\\ud800"}, "output": {}}',
        '{"input": {"\\udc00": 1}, "output": {}}',
        '{"input": {"k": "\\ud83d\\ude00"}, "output": {}}',
        '{"input": {"\\u0000": 1}, "output": {}}',
        '{"input": {}, "output": {}} trailing',
        ' {"input": {}, "output": {}, "status": "success"} ',
        '{"input": {}, "output": {}, "status": 1}',
        '{"input": [], "output": "x"}',
    ]
)


def deep_text(depth: int, opener: str) -> str:
    closer = "}" if opener == '{"a":' else "]"
    return opener * depth + "1" + closer * depth


PAYLOAD_TEXT = st.one_of(
    PAYLOAD.map(json.dumps),
    JSON_VALUE.map(lambda v: json.dumps({"input": v, "output": {}})),
    BAD_JSON_TEXT,
    st.builds(
        deep_text,
        st.sampled_from([31, 32, 33, 100, 5000, 100_000]),
        st.sampled_from(['{"a":', "["]),
    ),
    st.builds(
        lambda text, at, junk: text[:at] + junk + text[at:],
        PAYLOAD.map(json.dumps),
        st.integers(0, 40),
        st.sampled_from(["\\", '"', "}", "\\u", "\\ud800", "\x00", ","]),
    ),
)
