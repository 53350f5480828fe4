"""Bad text and deep JSON through the real server: INVALID_ARGUMENT naming the field, no row.

On both databases: PostgreSQL refuses NUL in text and jsonb, so without the engines' text rule
these calls came back INTERNAL there.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from typing import Any

import grpc
import pytest
from google.protobuf import json_format, timestamp_pb2

from costsim.analytics.v1 import analytics_pb2 as pb
from costsim_analytics.drivers.database import make_engine
from costsim_analytics.engines.canary.synthetic import synthetic_samples
from costsim_analytics.engines.pagination import MAX_EPOCH_SECONDS, MIN_EPOCH_SECONDS
from costsim_analytics.engines.provenance import prepare_batch
from costsim_analytics.handlers.uow import SqlAlchemyUnitOfWorkFactory
from tests.e2e.rpc_errors import details
from tests.factories import provenance_input, provenance_json

PLANS = synthetic_samples()
PAYLOAD_NUL = '{"input": {"\\u0000": 1}, "output": {}}'


def batch(records, request_id=""):
    request = pb.WriteProvenanceBatchRequest(request_id=request_id)
    for record in records:
        json_format.ParseDict(record, request.records.add())
    return request


def nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


def refused_field(call: Callable[[], object]) -> list[str]:
    with pytest.raises(grpc.RpcError) as exc:
        call()
    code, reason, fields = details(exc.value)
    assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT")
    return fields


def write_with(index: int, **overrides: Any) -> pb.WriteProvenanceBatchRequest:
    records = [provenance_json(i) for i in range(4)]
    records[index] = provenance_json(index, **overrides)
    return batch(records)


def canary(samples: list[tuple[str, dict[str, Any]]], **kw) -> pb.RunCanaryRequest:
    request = pb.RunCanaryRequest(min_samples=1, **kw)
    for sample_id, plan in samples:
        request.samples.add(id=sample_id).plan_input.update(plan)
    return request


def test_every_request_string_refuses_nul_and_surrogates_by_path(stub):
    deep_text = '{"a":' * 4999 + "{}" + "}" * 4999
    write_cases: dict[str, dict[str, Any]] = {
        "records[3].run_id": {"run_id": "r\x00"},
        "records[3].tenant_id": {"tenant_id": "\x00"},
        "records[3].commit_sha": {"commit_sha": "abc\x00"},
        "records[3].payload": {"payload": {"input": {"k": "v\x00"}, "output": {}}},
        "records[3].payload_json": {"payload": None, "payload_json": PAYLOAD_NUL},
    }
    for field, overrides in write_cases.items():
        request = write_with(3, **overrides)
        if overrides.get("payload", 0) is None:
            request.records[3].ClearField("payload")
        assert refused_field(partial(stub.WriteProvenanceBatch, request, timeout=10)) == [field]
    surrogate = write_with(2)
    surrogate.records[2].ClearField("payload")
    surrogate.records[2].payload_json = '{"input": {"k": "\\udc00"}, "output": {}}'
    assert refused_field(lambda: stub.WriteProvenanceBatch(surrogate, timeout=10)) == [
        "records[2].payload_json"
    ]
    deep = write_with(1)
    deep.records[1].ClearField("payload")
    deep.records[1].payload_json = deep_text  # once RecursionError, INTERNAL
    assert refused_field(lambda: stub.WriteProvenanceBatch(deep, timeout=10)) == [
        "records[1].payload_json"
    ]
    deep_struct = write_with(0, payload={"input": nested(32), "output": {}})
    assert refused_field(lambda: stub.WriteProvenanceBatch(deep_struct, timeout=10)) == [
        "records[0].payload"
    ]
    request_id = batch([provenance_json(0)], request_id="req\x00")
    assert refused_field(lambda: stub.WriteProvenanceBatch(request_id, timeout=10)) == [
        "request_id"
    ]

    for name in ("tenant_id", "run_id"):
        query = pb.QueryProvenanceRequest(**{name: "x\x00"})  # type: ignore[arg-type]
        stream = partial(stub.QueryProvenance, query, timeout=10)
        assert refused_field(lambda s=stream: list(s())) == [name]  # type: ignore[misc]
    drift = pb.GetDriftStatsRequest(tenant_id="t\x00")
    assert refused_field(lambda: stub.GetDriftStats(drift, timeout=10)) == ["tenant_id"]
    report = pb.GetCanaryReportRequest(run_id="canary\x00")
    assert refused_field(lambda: stub.GetCanaryReport(report, timeout=10)) == ["run_id"]
    promote = pb.PromoteCanaryRunRequest(run_id="canary\x00", name="ref")
    assert refused_field(lambda: stub.PromoteCanaryRun(promote, timeout=10)) == ["run_id"]

    plans = [plan for _, plan in PLANS[:3]]
    run = canary(
        [("s0", plans[0]), ("s1", {**plans[1], "deep": nested(32)}), ("s\x002", plans[2])],
        candidate_model="v2\x00",
    )
    assert refused_field(lambda: stub.RunCanary(run, timeout=60)) == [
        "candidate_model",
        "samples[1].plan_input",
        "samples[2].id",
    ]
    golden = pb.CreateGoldenDatasetRequest(name="ref", description="d\x00")
    golden.samples.add(id="a", expected_cost_cents=1.0).plan_input.update(plans[0])
    golden.samples.add(id="b", expected_cost_cents=1.0).plan_input.update({**plans[1], "\x00": 1})
    assert refused_field(lambda: stub.CreateGoldenDataset(golden, timeout=30)) == [
        "description",
        "samples[1].plan_input",
    ]

    # Nothing was written by any of them.
    assert list(stub.QueryProvenance(pb.QueryProvenanceRequest(), timeout=10)) == []
    listed = stub.ListGoldenDatasets(pb.ListGoldenDatasetsRequest(), timeout=10)
    assert list(listed.datasets) == []


def test_json_at_the_depth_limit_is_stored_and_reads_back(stub):
    payload = {"input": nested(30), "output": {"x": {}}}  # 32 levels with the payload and "a"
    record = provenance_json(0, payload=payload)
    stub.WriteProvenanceBatch(batch([record]), timeout=10)
    [message] = list(stub.QueryProvenance(pb.QueryProvenanceRequest(), timeout=10))
    assert json_format.MessageToDict(message.record.payload)["input"] == nested(30)


def test_rows_stored_too_deep_for_a_struct_are_served_as_json_text(server, stub):
    # Rows like these could be stored before ingest limited the depth: insert them through
    # the driver, past the service's validation.
    deep = {"input": nested(49), "output": {}}  # 50 levels: protobuf refuses it as a Struct
    rows = prepare_batch(
        [provenance_input(0, payload=deep), provenance_input(1)],
        max_batch=2,
        now=datetime.now(UTC),
        max_depth=100,
    )
    engine = make_engine(server.database_url)
    with SqlAlchemyUnitOfWorkFactory(engine)() as uow:
        ids = uow.provenance.insert_batch(rows)
        uow.commit()
    engine.dispose()
    got = {m.record.id: m.record for m in stub.QueryProvenance(pb.QueryProvenanceRequest())}
    assert set(got) == set(ids)
    deep_record, plain = got[ids[0]], got[ids[1]]
    assert not deep_record.HasField("payload")
    assert json.loads(deep_record.payload_json) == deep
    assert deep_record.run_id == "run-0" and deep_record.input_hash == rows[0].input_hash
    assert plain.HasField("payload") and plain.payload_json == ""


def test_instants_and_numbers_beyond_the_columns_are_refused_by_field(stub):
    after_9999 = timestamp_pb2.Timestamp(seconds=MAX_EPOCH_SECONDS + 1)
    before_year_1 = timestamp_pb2.Timestamp(seconds=MIN_EPOCH_SECONDS - 1)
    bad_nanos = timestamp_pb2.Timestamp(seconds=0, nanos=-1)
    calls: dict[str, Callable[[], object]] = {
        "start_time": lambda: list(
            stub.QueryProvenance(pb.QueryProvenanceRequest(start_time=after_9999), timeout=10)
        ),
        "end_time": lambda: stub.GetDriftStats(
            pb.GetDriftStatsRequest(end_time=bad_nanos), timeout=10
        ),
        "start_time ": lambda: list(
            stub.QueryCanaryReports(
                pb.QueryCanaryReportsRequest(start_time=before_year_1), timeout=10
            )
        ),
    }
    for field, call in calls.items():
        assert refused_field(call) == [field.strip()]
    # The first and last instants a datetime holds are fine on both databases.
    first = timestamp_pb2.Timestamp(seconds=MIN_EPOCH_SECONDS)
    last = timestamp_pb2.Timestamp(seconds=MAX_EPOCH_SECONDS, nanos=999_999_999)
    window: dict[str, Any] = {"start_time": first, "end_time": last}
    stub.WriteProvenanceBatch(batch([provenance_json(0)]), timeout=10)
    assert len(list(stub.QueryProvenance(pb.QueryProvenanceRequest(**window), timeout=10))) == 1
    assert stub.GetDriftStats(pb.GetDriftStatsRequest(**window), timeout=10).total == 1
    assert list(stub.QueryCanaryReports(pb.QueryCanaryReportsRequest(**window), timeout=10)) == []
    big_cost = write_with(2, v2_cost=1e300)
    assert refused_field(lambda: stub.WriteProvenanceBatch(big_cost, timeout=10)) == [
        "records[2].v2_cost"
    ]


def test_a_forged_page_token_with_a_huge_id_is_an_invalid_page_token(stub):
    stub.WriteProvenanceBatch(batch([provenance_json(i) for i in range(2)]), timeout=10)
    request = pb.QueryProvenanceRequest(page_size=1)
    [first] = list(stub.QueryProvenance(request, timeout=10))
    raw = base64.urlsafe_b64decode(first.page_token + "=" * (-len(first.page_token) % 4))
    for row_id in (2**63, 2**70):
        body = raw.decode().rsplit("|", 1)[0] + f"|{row_id}"
        token = base64.urlsafe_b64encode(body.encode()).rstrip(b"=").decode()
        resumed = pb.QueryProvenanceRequest(page_size=1, page_token=token)
        with pytest.raises(grpc.RpcError) as exc:
            list(stub.QueryProvenance(resumed, timeout=10))
        assert details(exc.value) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_PAGE_TOKEN",
            ["page_token"],
        )


def test_a_huge_model_name_is_refused_without_being_echoed_whole(stub):
    name = "m" * 10_000
    calls = [
        lambda: stub.RunCanary(canary([("s0", PLANS[0][1])], candidate_model=name), timeout=60),
        lambda: stub.CompareGolden(
            pb.CompareGoldenRequest(name="ref", baseline_model=name), timeout=30
        ),
    ]
    for call, field in zip(calls, ("candidate_model", "baseline_model"), strict=True):
        with pytest.raises(grpc.RpcError) as exc:
            call()
        assert details(exc.value) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_ARGUMENT",
            [field],
        )
        message = exc.value.details() or ""
        assert "unknown cost model" in message and len(message) < 300
