r"""Hypothesis strategies for every AnalyticsService request (values from ``fuzz_values.py``).

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
from google.protobuf.descriptor import FieldDescriptor, MethodDescriptor
from google.protobuf.message_factory import GetMessageClass
from hypothesis import strategies as st

from costsim.analytics.v1 import analytics_pb2 as pb
from costsim_analytics.engines.provenance import SOURCES, VARIANT_SLUGS
from tests.e2e.fuzz_values import (
    AMOUNT,
    HEX,
    LIMIT,
    NOW_S,
    PAYLOAD,
    PAYLOAD_TEXT,
    PLAN,
    SHARE,
    TEXT,
    TIMESTAMP,
    Msg,
    any_message,
    field_value,
    mostly,
    once_in,
    set_field,
    struct_of,
    timestamp,
)

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


# --- plausible requests -----------------------------------------------------------------------

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


def explain(draw: Draw, pool: Pool) -> Msg:
    """A run the server made (or any), any grouping (also unknown numbers), any ``top``."""
    group_by = draw(st.sampled_from([*pb.ExplainGroupBy.values(), -1, 99]))
    top = draw(st.sampled_from([0, 1, 5, 100, 101, -1, 2**31 - 1]))
    return pb.ExplainCanaryRunRequest(run_id=known_run(draw, pool), group_by=group_by, top=top)


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
    "ExplainCanaryRun": explain,
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
