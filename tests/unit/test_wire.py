"""The wire reader (api/wire.py) finds a problem exactly when protobuf's decoder refuses."""

from __future__ import annotations

from google.protobuf import json_format, message, struct_pb2
from google.protobuf.message_factory import GetMessageClass
from hypothesis import given, settings
from hypothesis import strategies as st

from costsim.analytics.v1 import analytics_pb2 as pb
from costsim_analytics.api.wire import CORRUPT, CUT_SHORT, MAX_DEPTH, NOT_UTF8, TOO_DEEP
from costsim_analytics.api.wire import first_problem as problem
from costsim_analytics.engines.canary.synthetic import synthetic_samples
from tests.factories import provenance_json

METHODS = pb.DESCRIPTOR.services_by_name["AnalyticsService"].methods
REQUESTS = {m.name: GetMessageClass(m.input_type) for m in METHODS}
DESCRIPTORS = {m.name: m.input_type for m in METHODS}


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        if not value:
            return bytes([*out, byte])
        out.append(byte | 0x80)


def field(number: int, body: bytes) -> bytes:
    return varint(number << 3 | 2) + varint(len(body)) + body


def batch(n: int = 3, request_id: str = "") -> pb.WriteProvenanceBatchRequest:
    request = pb.WriteProvenanceBatchRequest(request_id=request_id)
    for i in range(n):
        json_format.ParseDict(provenance_json(i), request.records.add())
    return request


def struct_batch(levels: int) -> bytes:
    request = batch(2)
    inner = request.records[1].payload
    for _ in range(levels):
        inner = inner.fields["a"].struct_value
    return request.SerializeToString()


def decodes(cls: type[message.Message], data: bytes) -> bool:
    try:
        cls.FromString(data)
    except message.DecodeError:
        return False
    return True


def seeds() -> list[tuple[str, bytes]]:
    canary = pb.RunCanaryRequest(seed=3, request_id="r")
    for sample_id, plan in synthetic_samples()[:2]:
        canary.samples.add(id=sample_id).plan_input.update(plan)
    golden = pb.CreateGoldenDatasetRequest(name="ref")
    golden.samples.add(id="a", expected_cost_cents=1.5).plan_input.update({"plan": []})
    query = pb.QueryProvenanceRequest(tenant_id="t", page_size=5)
    query.start_time.seconds = 5
    return [
        ("WriteProvenanceBatch", batch(request_id="req-1").SerializeToString()),
        ("RunCanary", canary.SerializeToString()),
        ("CreateGoldenDataset", golden.SerializeToString()),
        ("QueryProvenance", query.SerializeToString()),
        ("WriteProvenanceBatch", struct_batch(32)),
    ]


SEEDS = seeds()
# Bytes that make wire-format trouble: group tags, invalid wire types, long varints.
NASTY = st.sampled_from([0x0B, 0x0C, 0x13, 0x14, 0x0E, 0x0F, 0x0A, 0x80, 0xFF, 0x00, 0xFA])


@st.composite
def mutated(draw: st.DrawFn) -> tuple[str, bytes]:
    name, seed = draw(st.sampled_from(SEEDS))
    data = bytearray(seed)
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data)))
        op = draw(st.sampled_from(["cut", "set", "insert", "flip", "nasty"]))
        if op == "cut":
            del data[at:]
        elif op == "set" and at < len(data):
            data[at] = draw(st.integers(0, 255))
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=6))
        elif op == "flip" and at < len(data):
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "nasty":
            data[at:at] = bytes([draw(NASTY)])
    return name, bytes(data)


@settings(max_examples=3000, deadline=None)
@given(mutated())
def test_the_reader_finds_a_problem_exactly_when_protobuf_refuses_the_bytes(case):
    name, data = case
    assert (problem(data, DESCRIPTORS[name]) is None) == decodes(REQUESTS[name], data)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64), st.sampled_from(sorted(REQUESTS)))
def test_on_random_bytes_too(data, name):
    assert (problem(data, DESCRIPTORS[name]) is None) == decodes(REQUESTS[name], data)


def test_struct_depth_is_named_at_the_payload_exactly_past_the_decoders_limit():
    ok, deep = struct_batch(33), struct_batch(34)  # the first Struct depth upb refuses: 34
    assert decodes(pb.WriteProvenanceBatchRequest, ok)
    assert not decodes(pb.WriteProvenanceBatchRequest, deep)
    assert problem(ok, pb.WriteProvenanceBatchRequest.DESCRIPTOR) is None
    assert problem(deep, pb.WriteProvenanceBatchRequest.DESCRIPTOR) == (
        "records[1].payload",
        TOO_DEEP,
    )


def test_groups_count_towards_the_depth_too():
    def groups(n: int) -> bytes:
        return varint(99 << 3 | 3) * n + varint(99 << 3 | 4) * n

    request = pb.ListGoldenDatasetsRequest
    assert decodes(request, groups(MAX_DEPTH)) and not decodes(request, groups(MAX_DEPTH + 1))
    assert problem(groups(MAX_DEPTH), request.DESCRIPTOR) is None
    assert problem(groups(MAX_DEPTH + 1), request.DESCRIPTOR) == ("request", TOO_DEEP)


def test_paths_name_the_innermost_field_the_bytes_show_bad():
    good = batch(3).SerializeToString()
    # The last record is cut short: its declared length runs past the end.
    assert problem(good[:-1], pb.WriteProvenanceBatchRequest.DESCRIPTOR) == (
        "records[2]",
        CUT_SHORT,
    )
    # A run_id that is not UTF-8, inside the second record.
    record = field(2, b"\xc3\x28") + field(3, b"acme")
    data = field(1, pb.ProvenanceRecord(run_id="a").SerializeToString()) + field(1, record)
    assert not decodes(pb.WriteProvenanceBatchRequest, data)
    assert problem(data, pb.WriteProvenanceBatchRequest.DESCRIPTOR) == (
        "records[1].run_id",
        NOT_UTF8,
    )
    # Inside a plan_input (a Struct) the path stops at the field holding the JSON.
    sample = field(1, b"s0") + field(2, field(1, field(1, b"k") + field(2, b"\x1a\x02\xff\xfe")))
    data = field(9, sample)
    assert not decodes(pb.RunCanaryRequest, data)
    assert problem(data, pb.RunCanaryRequest.DESCRIPTOR) == ("samples[0].plan_input", NOT_UTF8)
    # Wire type 7 does not exist.
    assert problem(b"\x0f", pb.GetCanaryReportRequest.DESCRIPTOR) == ("request", CORRUPT)


def test_a_valid_struct_decodes_and_reads_clean():
    value = struct_pb2.Struct()
    value.update({"a": [1, {"b": "c"}, None, True]})
    assert problem(value.SerializeToString(), struct_pb2.Struct.DESCRIPTOR) is None


def test_the_reader_gives_up_after_its_field_budget():
    data = batch(50).SerializeToString()[:-1]
    descriptor = pb.WriteProvenanceBatchRequest.DESCRIPTOR
    assert problem(data, descriptor) == ("records[49]", CUT_SHORT)
    assert problem(data, descriptor, max_fields=100) is None
