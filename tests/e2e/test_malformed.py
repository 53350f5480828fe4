"""Bytes that are no request, and requests over their RPC's limit, through the real server.

Before api/decoding.py gRPC answered both on its own: UNKNOWN with protobuf's words for bytes
that do not parse, and one 80 MiB receive limit for every RPC.
"""

from __future__ import annotations

import urllib.request
from functools import partial

import grpc
import pytest
from google.protobuf import json_format
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from costsim.analytics.v1 import analytics_pb2 as pb
from tests.e2e.rpc_errors import details
from tests.e2e.server import SERVICE, ServerProcess
from tests.factories import provenance_json

# The e2e server runs with COSTSIM_MAX_BATCH=50: 50 x 32 KiB + 64 KiB.
BATCH_LIMIT = 50 * 32 * 1024 + 64 * 1024
QUERY_LIMIT = 64 * 1024


def raw(channel: grpc.Channel, method: str, data: bytes, stream: bool = False) -> object:
    path = f"/{SERVICE}/{method}"
    if stream:
        return list(channel.unary_stream(path, None, None)(data, timeout=10))
    return channel.unary_unary(path, None, None)(data, timeout=10)


def refusal(call) -> tuple[grpc.StatusCode, str, list[str], dict[str, str], list[str]]:
    """(code, reason, fields, ErrorInfo metadata, detail kinds) of a refused call."""
    with pytest.raises(grpc.RpcError) as exc:
        call()
    code, reason, fields = details(exc.value)
    status = rpc_status.from_call(exc.value)  # type: ignore[arg-type]
    metadata: dict[str, str] = {}
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            metadata = dict(info.metadata)
    kinds = [d.type_url.rsplit(".", 1)[-1] for d in status.details]
    return code, reason, fields, metadata, kinds


def record_bytes(**fields: bytes) -> bytes:
    """A serialized ProvenanceRecord with raw (possibly invalid) bytes for some fields."""
    record = pb.ProvenanceRecord()
    json_format.ParseDict(provenance_json(0), record)
    out = record.SerializeToString()
    for name, value in fields.items():
        number = pb.ProvenanceRecord.DESCRIPTOR.fields_by_name[name].number
        out += bytes([number << 3 | 2, len(value)]) + value
    return out


def deep_payload_batch(levels: int) -> bytes:
    request = pb.WriteProvenanceBatchRequest()
    for i in range(2):
        json_format.ParseDict(provenance_json(i), request.records.add())
    inner = request.records[1].payload.fields["input"].struct_value
    for _ in range(levels):
        inner = inner.fields["a"].struct_value
    return request.SerializeToString()


def handled(server: ServerProcess, method: str, code: str) -> float:
    with urllib.request.urlopen(f"{server.http_url}/metrics", timeout=5) as response:
        text = response.read().decode()
    for line in text.splitlines():
        if (
            line.startswith("grpc_server_handled_total{")
            and f'grpc_method="{method}"' in line
            and f'grpc_code="{code}"' in line
        ):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_undecodable_requests_are_invalid_argument_naming_the_field(server, channel, stub):
    malformed = grpc.StatusCode.INVALID_ARGUMENT, "MALFORMED_REQUEST"
    bad_run_id = record_bytes(run_id=b"\xc3\x28")  # not UTF-8
    assert 128 <= len(bad_run_id) < 16384
    length = bytes([len(bad_run_id) & 0x7F | 0x80, len(bad_run_id) >> 7])
    cases = [
        # Garbage: a length running past the end.
        ("WriteProvenanceBatch", b"\x0a\x05ab", "records[0]"),
        # A Struct nested past protobuf's 100 levels of messages (about 33 Struct levels).
        ("WriteProvenanceBatch", deep_payload_batch(40), "records[1].payload"),
        ("WriteProvenanceBatch", b"\x0a" + length + bad_run_id, "records[0].run_id"),
        ("QueryProvenance", b"\x12\x02\xc3\x28", "variant_slug"),
        ("QueryCanaryReports", b"\xff\xff\xff", "request"),
        ("GetCanaryReport", b"\x0f", "request"),
        ("ActivateGoldenDataset", b"\x10\x80\x80", "version"),
    ]
    before = handled(server, "WriteProvenanceBatch", "INVALID_ARGUMENT")
    for method, data, field in cases:
        stream = method.startswith("Query")
        code, reason, fields, _, _ = refusal(partial(raw, channel, method, data, stream))
        assert (code, reason, fields) == (*malformed, [field]), method
    assert handled(server, "WriteProvenanceBatch", "INVALID_ARGUMENT") == before + 3
    # Nothing was written, and the server still answers well-formed calls.
    assert list(stub.QueryProvenance(pb.QueryProvenanceRequest(), timeout=10)) == []
    assert "Traceback" not in server.log()


def test_a_request_over_its_rpcs_limit_is_resource_exhausted_before_it_is_parsed(server, stub):
    query = pb.QueryProvenanceRequest(tenant_id="t" * QUERY_LIMIT)
    code, reason, fields, metadata, kinds = refusal(
        lambda: list(stub.QueryProvenance(query, timeout=10))
    )
    assert (code, reason, fields) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "MESSAGE_TOO_LARGE", [])
    assert metadata["method"] == "QueryProvenance"
    assert metadata["limit_bytes"] == str(QUERY_LIMIT)
    assert metadata["setting"] == "COSTSIM_MAX_QUERY_MESSAGE_KB"
    assert "RetryInfo" not in kinds
    # Below the query limit, a long name is the field rule's to refuse.
    long_name = pb.ListGoldenDatasetsRequest(name="n" * 10_000)
    code, reason, fields, _, _ = refusal(lambda: stub.ListGoldenDatasets(long_name, timeout=10))
    assert (code, fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["name"])

    # A batch one byte over its limit, a batch under it: the limit follows COSTSIM_MAX_BATCH.
    def batch_of(size: int) -> pb.WriteProvenanceBatchRequest:
        request = pb.WriteProvenanceBatchRequest()
        json_format.ParseDict(provenance_json(0, payload=None), request.records.add())
        request.records[0].payload_json = "x" * (size - request.ByteSize() - 8)
        while request.ByteSize() < size:  # the length prefixes grow with the text
            request.records[0].payload_json += "x"
        assert request.ByteSize() == size
        return request

    over = batch_of(BATCH_LIMIT + 1)
    code, reason, _, metadata, kinds = refusal(lambda: stub.WriteProvenanceBatch(over, timeout=10))
    assert (code, reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "MESSAGE_TOO_LARGE")
    assert metadata["limit_bytes"] == str(BATCH_LIMIT) and metadata["size_bytes"] == str(
        BATCH_LIMIT + 1
    )
    assert "RetryInfo" not in kinds
    under = batch_of(BATCH_LIMIT)  # parsed, then refused by the payload's own rule
    code, reason, fields, _, _ = refusal(lambda: stub.WriteProvenanceBatch(under, timeout=10))
    assert (code, fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["records[0].payload_json"])
    assert handled(server, "QueryProvenance", "RESOURCE_EXHAUSTED") == 1
