"""Hypothesis strategies for every AnalyticsService request, from the message descriptors.

Two kinds of request, mixed:

- **any**: every field of the input message (walked from its descriptor) set or left unset,
  each with any value of its type, biased to the nasty ones: extreme and non-finite numbers,
  unknown enum numbers, NUL and long strings, Timestamps outside 0001-9999 or with nanos out
  of range, ``Struct`` values nested up to beyond protobuf's limit, ``payload_json`` nested
  deep, invalid, or with ``\ud800`` and ``\u0000`` escapes (a protobuf string cannot hold an
  unpaired surrogate, JSON text can spell one);
- **plausible**: a request a real caller might send (records like a simulation leaves,
  canary samples from the synthetic plans, golden datasets, ids the server handed out
  earlier: run ids, dataset names and versions, page tokens), then with a few fields
  replaced by "any" values, so that handlers are reached past their first validation.

:class:`Pool` holds what earlier answers handed out; the strategies draw from it at run time
(``st.data()``), so later examples resume real page tokens and promote real runs. Every
choice that depends on the pool (or on the length of what it yields) draws a number from a
fixed range and picks with it (:func:`pick`): hypothesis requires the same draws, whatever
the pool holds. Undecodable bytes come from :func:`mutated_bytes`.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import message as pb_message
from google.protobuf import struct_pb2, timestamp_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from google.protobuf.message_factory import GetMessageClass
from hypothesis import strategies as st

from costsim.analytics.v1 import analytics_pb2 as pb
from costsim_analytics.engines.canary.synthetic import synthetic_samples
from costsim_analytics.engines.pagination import MAX_EPOCH_SECONDS, MIN_EPOCH_SECONDS
from costsim_analytics.engines.provenance import PAYLOAD_STATUSES, SOURCES, VARIANT_SLUGS

SERVICE = pb.DESCRIPTOR.services_by_name["AnalyticsService"]
METHODS: dict[str, MethodDescriptor] = {m.name: m for m in SERVICE.methods}
STREAMING = frozenset(m.name for m in SERVICE.methods if m.server_streaming)
WRITES = frozenset(
    {
        "WriteProvenanceBatch",
        "RunCanary",
        "CreateGoldenDataset",
        "PromoteCanaryRun",
        "ActivateGoldenDataset",
    }
)
PLANS = [plan for _, plan in synthetic_samples()]
NOW_S = 1_800_000_000  # 2027: records get the server's clock, filters cover it or not

Msg = Any  # any generated message: the strategies set fields by descriptor
Json = Any
# What the plain (non-composite) builders draw with: a composite's draw, or st.data()'s.
Draw = Callable[..., Any]


def pick(draw: Draw, items: list[Any]) -> Any:
    """One of ``items`` (None when empty), by a draw that does not depend on them."""
    index = draw(st.integers(0, 2**16 - 1))
    return items[index % len(items)] if items else None


def position(draw: Draw, size: int) -> int:
    """A position from 0 to ``size``, by a draw that does not depend on it."""
    return int(draw(st.integers(0, 2**16 - 1))) % (size + 1)


def request_class(method: str) -> type[pb_message.Message]:
    return GetMessageClass(METHODS[method].input_type)


def response_class(method: str) -> type[pb_message.Message]:
    return GetMessageClass(METHODS[method].output_type)


# --- what earlier answers handed out -----------------------------------------------------------


@dataclass
class Pool:
    """Ids the server handed out, for plausible requests to name (grows during the run)."""

    run_ids: list[str] = field(default_factory=list)
    golden: list[tuple[str, int]] = field(default_factory=list)
    # (method, the request that was answered, a page token from the answer)
    tokens: list[tuple[str, bytes, str]] = field(default_factory=list)

    def remember_token(self, method: str, request: bytes, token: str) -> None:
        if token and len(self.tokens) < 200:
            self.tokens.append((method, request, token))


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


# --- plausible requests -----------------------------------------------------------------------


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


# Valid values include the edges of what is valid: they are stored, and must read back.
EDGE_TEXT = st.sampled_from(["é" * 256, "😀" * 256, " ", "\u2028", "\\", "'; --", "\x7f"])
GOOD_RUN_IDS = st.one_of(st.sampled_from([f"run-{i}" for i in range(5)]), EDGE_TEXT)
RUN_IDS = mostly(GOOD_RUN_IDS, TEXT)
TENANTS = st.one_of(st.sampled_from(["acme", "globex", "initech", ""]), EDGE_TEXT)
NAMES = st.sampled_from(["ref", "golden-1", "golden.v2", "Ref_3"])
REQUEST_IDS = mostly(st.sampled_from(["", "", "", "", "req-1", "req-2", "req-3"]), TEXT)
MODELS = mostly(st.sampled_from(["", "v1", "v2"]), st.sampled_from(["v3", "V2", "\x00"]))
COSTS = mostly(
    st.one_of(st.floats(0, 10_000), st.sampled_from([0.0, 5e-324, 1e15]), st.floats(0, 1e15)),
    st.sampled_from([1e16, -1.0, -5e-324, math.nan, math.inf]),
)
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


@st.composite
def record(draw: st.DrawFn) -> pb.ProvenanceRecord:
    rec = pb.ProvenanceRecord(
        # One bad field in a record spoils its whole batch: rarer here than elsewhere.
        run_id=draw(mostly(GOOD_RUN_IDS, TEXT, odds=64)),
        tenant_id=draw(TENANTS),
        variant_slug=draw(st.sampled_from(sorted(VARIANT_SLUGS))),
        source=draw(st.sampled_from(sorted(SOURCES))),
        model_version=draw(st.sampled_from(["2.0.0", "1.9", ""])),
        commit_sha=draw(st.sampled_from(["3f2c9e1", ""])),
        runtime_ms=draw(st.one_of(st.integers(0, 10_000), st.just(2**31 - 1))),
    )
    for name in ("v1_cost", "v2_cost"):
        if draw(st.booleans()):
            setattr(rec, name, draw(COSTS))
    how = draw(st.sampled_from(["struct", "json", "json+hashes", "hashes"]))
    value = draw(PAYLOAD)
    if how == "struct":
        rec.payload.CopyFrom(struct_of(value))
    elif how.startswith("json"):
        rec.payload_json = draw(mostly(st.just(json.dumps(value)), PAYLOAD_TEXT))
    if how.endswith("hashes"):
        rec.input_hash, rec.output_hash = draw(HEX), draw(HEX)
    return rec


def write_batch(draw: Draw, pool: Pool) -> Msg:
    records = draw(st.lists(record(), min_size=1, max_size=5))
    if draw(once_in(40)):
        records *= 60  # past the e2e server's COSTSIM_MAX_BATCH of 50
    return pb.WriteProvenanceBatchRequest(records=records, request_id=draw(REQUEST_IDS))


def window(draw: Draw, msg: Msg) -> None:
    for name in ("start_time", "end_time"):
        choice = draw(st.sampled_from(["unset", "near", "any"]))
        if choice == "near":
            seconds = NOW_S + draw(st.integers(-(10**9), 10**9))
            getattr(msg, name).CopyFrom(timestamp(seconds, draw(st.integers(0, 999_999_999))))
        elif choice == "any":
            getattr(msg, name).CopyFrom(draw(TIMESTAMP))


def page(draw: Draw, msg: Msg, method: str, pool: Pool) -> None:
    msg.page_size = draw(st.sampled_from([0, 1, 2, 5, 100, 10_000, 10_001, -1, 2**31 - 1]))
    tokens = [t for t in pool.tokens if t[0] == method]
    choice = draw(st.sampled_from(["none", "resume", "forged", "any"]))
    known = pick(draw, tokens)
    if choice == "resume" and known is not None:
        _, answered, token = known
        msg.MergeFromString(answered)  # the same filters, to continue after the token
        msg.page_token = token
    elif choice == "forged":
        msg.page_token = draw(forged_token(None if known is None else known[2]))
    elif choice == "any":
        msg.page_token = draw(TEXT)


@st.composite
def forged_token(draw: st.DrawFn, token: str | None) -> str:
    """A page token that decodes (a real one, if given), with a part replaced by a bad value."""
    parts = ["2", "provenance", "0123456789abcdef", str(NOW_S * 10**6), "1"]
    if token is not None:
        parts = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode().split("|")
    at = position(draw, len(parts) - 1)
    parts[at] = draw(
        st.sampled_from(
            ["", "-1", "0", "9" * 30, str(2**63), str(2**64), "x", "\x00", "1e5", "1.5", "٣"]
        )
    )
    if draw(st.booleans()):
        parts = parts[: position(draw, len(parts))] + ["extra"] * draw(st.integers(0, 2))
    return base64.urlsafe_b64encode("|".join(parts).encode()).rstrip(b"=").decode()


def query_provenance(draw: Draw, pool: Pool) -> Msg:
    msg = pb.QueryProvenanceRequest(
        tenant_id=draw(TENANTS),
        variant_slug=draw(st.sampled_from(["", *sorted(VARIANT_SLUGS)])),
        source=draw(st.sampled_from(["", *sorted(SOURCES)])),
        run_id=draw(st.one_of(st.just(""), RUN_IDS)),
        input_hash=draw(st.one_of(st.just(""), HEX)),
    )
    window(draw, msg)
    page(draw, msg, "QueryProvenance", pool)
    return msg


def drift_stats(draw: Draw, pool: Pool) -> Msg:
    msg = pb.GetDriftStatsRequest(
        tenant_id=draw(TENANTS), variant_slug=draw(st.sampled_from(["", *sorted(VARIANT_SLUGS)]))
    )
    window(draw, msg)
    return msg


def canary_reports(draw: Draw, pool: Pool) -> Msg:
    msg = pb.QueryCanaryReportsRequest()
    msg.status = draw(st.integers(0, 6))  # 6: a status no server knows
    if draw(st.booleans()):
        msg.passed = draw(st.booleans())
    window(draw, msg)
    page(draw, msg, "QueryCanaryReports", pool)
    return msg


def known_run(draw: Draw, pool: Pool) -> str:
    """Mostly the run id of a report the server wrote, else any."""
    use_other, known, other = draw(once_in(4)), pick(draw, pool.run_ids), draw(RUN_IDS)
    return str(known) if not use_other and known is not None else str(other)


def known_dataset(draw: Draw, pool: Pool) -> tuple[str, int | None]:
    """Mostly a stored golden dataset version (or the next, or its active one), else any."""
    use_other, known = draw(once_in(4)), pick(draw, pool.golden)
    shift = draw(st.sampled_from([0, None, 1]))
    name, version = draw(NAMES), draw(st.sampled_from([None, 1, 2, 0, -1, 2**31 - 1]))
    if not use_other and known is not None:
        return known[0], None if shift is None else known[1] + shift
    return name, version


def get_report(draw: Draw, pool: Pool) -> Msg:
    return pb.GetCanaryReportRequest(run_id=known_run(draw, pool))


@st.composite
def canary_sample(draw: st.DrawFn, index: int) -> pb.CanarySample:
    sample = pb.CanarySample(id=f"s{index}")
    sample.plan_input.CopyFrom(struct_of(draw(PLAN)))
    return sample


def run_canary(draw: Draw, pool: Pool) -> Msg:
    msg = pb.RunCanaryRequest(
        seed=draw(st.integers(0, 5)),
        baseline_model=draw(MODELS),
        candidate_model=draw(MODELS),
        request_id=draw(REQUEST_IDS),
        judge=draw(st.sampled_from(["", "", "calibrated", "legacy"])),
    )
    if draw(st.booleans()):
        n = draw(st.integers(1, 40))
        msg.samples.extend(draw(canary_sample(i)) for i in range(n))
        msg.min_samples = draw(st.sampled_from([1, 2, 30, 40, 100_000]))
    else:
        msg.sample_count = draw(st.sampled_from([0, 1, 30, 100, 1000, 100_000]))
        msg.lookback_days = draw(st.sampled_from([0, 1, 7, 3650]))
    use_golden, golden = draw(st.booleans()), pick(draw, pool.golden)
    if use_golden and golden is not None:
        msg.golden_dataset = golden[0]
    for name in ("drift_threshold", "outlier_threshold", "median_delta_tolerance"):
        if draw(once_in(4)):
            setattr(msg, name, draw(LIMIT))
    for name in ("outlier_max_pct", "major_drift_max_pct"):
        if draw(once_in(4)):
            setattr(msg, name, draw(SHARE))
    return msg


@st.composite
def golden_sample(draw: st.DrawFn, index: int) -> pb.GoldenSample:
    sample = pb.GoldenSample(
        id=f"g{index}",
        expected_cost_cents=draw(AMOUNT),
        expected_feasible=draw(st.booleans()),
    )
    sample.plan_input.CopyFrom(struct_of(draw(PLAN)))
    if draw(st.booleans()):
        sample.expected_duration_ms = draw(AMOUNT)
    return sample


def create_golden(draw: Draw, pool: Pool) -> Msg:
    n = draw(st.integers(1, 8))
    return pb.CreateGoldenDatasetRequest(
        name=draw(NAMES),
        description=draw(st.sampled_from(["", "reference plans"])),
        samples=[draw(golden_sample(i)) for i in range(n)],
        request_id=draw(REQUEST_IDS),
    )


def promote(draw: Draw, pool: Pool) -> Msg:
    return pb.PromoteCanaryRunRequest(
        run_id=known_run(draw, pool), name=draw(NAMES), request_id=draw(REQUEST_IDS)
    )


def get_golden(draw: Draw, pool: Pool) -> Msg:
    name, version = known_dataset(draw, pool)
    return pb.GetGoldenDatasetRequest(name=name, version=version)


def list_golden(draw: Draw, pool: Pool) -> Msg:
    return pb.ListGoldenDatasetsRequest(name=draw(st.one_of(st.just(""), NAMES)))


def activate(draw: Draw, pool: Pool) -> Msg:
    name, version = known_dataset(draw, pool)
    return pb.ActivateGoldenDatasetRequest(name=name, version=version or 1)


def compare(draw: Draw, pool: Pool) -> Msg:
    name, version = known_dataset(draw, pool)
    msg = pb.CompareGoldenRequest(
        name=name, version=version, candidate_model=draw(MODELS), baseline_model=draw(MODELS)
    )
    if draw(st.booleans()):
        msg.worst_samples = draw(st.sampled_from([0, 1, 10, 1000, 1001, -1]))
    if draw(once_in(3)):
        msg.tolerance = draw(LIMIT)
    if draw(once_in(3)):
        msg.min_share = draw(SHARE)
    if draw(once_in(3)):
        msg.max_feasibility_flips = draw(st.sampled_from([0, 1, 2**31 - 1, -1]))
    return msg


PLAUSIBLE: dict[str, Callable[[Draw, Pool], Msg]] = {
    "WriteProvenanceBatch": write_batch,
    "QueryProvenance": query_provenance,
    "GetDriftStats": drift_stats,
    "QueryCanaryReports": canary_reports,
    "GetCanaryReport": get_report,
    "RunCanary": run_canary,
    "CreateGoldenDataset": create_golden,
    "PromoteCanaryRun": promote,
    "GetGoldenDataset": get_golden,
    "ListGoldenDatasets": list_golden,
    "ActivateGoldenDataset": activate,
    "CompareGolden": compare,
}


def spoil(draw: Draw, msg: Msg) -> None:
    """Replace one field of ``msg``, or of one item of a repeated message field, by any value."""
    target = msg
    repeated = [
        fd
        for fd in msg.DESCRIPTOR.fields
        if fd.is_repeated and fd.type == FieldDescriptor.TYPE_MESSAGE and getattr(msg, fd.name)
    ]
    inside, at = draw(st.booleans()), draw(st.integers(0, 2**16))
    holder: FieldDescriptor | None = pick(draw, repeated)
    if inside and holder is not None:
        items = getattr(msg, holder.name)
        target = items[at % len(items)]
    fd: FieldDescriptor = draw(st.sampled_from(list(target.DESCRIPTOR.fields)))
    if fd.name == "payload_json" or (fd.name == "payload" and draw(st.booleans())):
        target.ClearField("payload")
        target.payload_json = draw(PAYLOAD_TEXT)
        return
    set_field(target, fd, draw(field_value(fd, depth=1)))


def request(draw: Draw, method: str, pool: Pool) -> Msg:
    """A request for ``method``: plausible (half of them spoilt), or any."""
    if draw(once_in(6)):
        return draw(any_message(METHODS[method].input_type))
    msg = PLAUSIBLE[method](draw, pool)
    for _ in range(draw(st.sampled_from([0, 0, 0, 1, 1, 2]))):
        spoil(draw, msg)
    return msg


def mutated_bytes(draw: Draw, data: bytes) -> bytes:
    """``data`` cut, flipped or with bytes inserted: mostly no longer a valid message."""
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 3))):
        at = position(draw, len(out))
        op = draw(st.sampled_from(["cut", "flip", "insert", "tag"]))
        if op == "cut":
            del out[at:]
        elif op == "flip" and at < len(out):
            out[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "insert":
            out[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif op == "tag":
            out[at:at] = bytes([draw(st.sampled_from([0x0B, 0x0C, 0x0F, 0x80, 0xFF, 0x0A]))])
    return bytes(out)
