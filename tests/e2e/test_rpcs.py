"""Every RPC through the real server process, on SQLite and PostgreSQL."""

from __future__ import annotations

import concurrent.futures
import math
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from google.protobuf import json_format

from costsim.analytics.v1 import analytics_pb2 as pb
from costsim_analytics.drivers.database import make_engine
from costsim_analytics.engines.canonical import content_hash
from costsim_analytics.handlers.uow import SqlAlchemyUnitOfWorkFactory
from tests.e2e.rpc_errors import details
from tests.factories import canary_report, provenance_json


def batch(records, request_id=""):
    request = pb.WriteProvenanceBatchRequest(request_id=request_id)
    for record in records:
        json_format.ParseDict(record, request.records.add())
    return request


def query_all(stub, **kwargs):
    return list(stub.QueryProvenance(pb.QueryProvenanceRequest(**kwargs), timeout=30))


def stored_count(stub):
    return len(query_all(stub, page_size=10_000))


def test_write_returns_ids_in_order_and_computes_fields(stub):
    response = stub.WriteProvenanceBatch(batch([provenance_json(i) for i in range(5)]), timeout=10)
    assert len(response.ids) == 5 and not response.replayed
    assert list(response.ids) == sorted(response.ids)
    records = {m.record.id: m.record for m in query_all(stub)}
    for i, row_id in enumerate(response.ids):
        rec = records[row_id]
        source = provenance_json(i)
        assert rec.run_id == f"run-{i}"
        assert rec.cost_delta == pytest.approx(source["v2_cost"] - source["v1_cost"])
        # Struct turned budget_cents into 1000.0; the hash is still that of the integer 1000
        assert rec.input_hash == content_hash(source["payload"]["input"])
        assert rec.created_at.seconds > 0


def test_every_validation_rule_is_invalid_argument_naming_the_field(stub):
    good = provenance_json(0)
    cases: dict[str, dict[str, object]] = {
        "records[1].variant_slug": {"variant_slug": "v9"},
        "records[1].source": {"source": "prod"},
        "records[1].v1_cost": {"v1_cost": -1.0},
        "records[1].v2_cost": {"v2_cost": "NaN"},
        "records[1].runtime_ms": {"runtime_ms": -5},
        "records[1].input_hash": {"input_hash": "XYZ"},
        "records[1].output_hash": {"output_hash": "0" * 63},
        "records[1].tenant_id": {"tenant_id": "t" * 257},
        "records[1].payload": {"payload": {"input": {}, "output": {}, "blob": "x" * 70_000}},
        "records[1].id": {"id": "7"},
        "records[1].cost_delta": {"cost_delta": 1.0},
        "records[1].created_at": {"created_at": "2026-01-01T00:00:00Z"},
    }
    for field, override in cases.items():
        with pytest.raises(grpc.RpcError) as exc:
            stub.WriteProvenanceBatch(batch([good, {**good, **override}]), timeout=10)
        code, reason, fields = details(exc.value)
        assert (code, reason, fields) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_ARGUMENT",
            [field],
        )
    with pytest.raises(grpc.RpcError) as exc:
        stub.WriteProvenanceBatch(batch([{**good, "v1_cost": "Infinity"}]), timeout=10)
    assert details(exc.value)[2] == ["records[0].v1_cost"]
    assert stored_count(stub) == 0  # nothing was written by any of them


def test_batch_size_and_request_id_limits(stub):
    for records, reason in (
        ([], "EMPTY_BATCH"),
        ([provenance_json(i) for i in range(51)], "BATCH_TOO_LARGE"),
    ):
        with pytest.raises(grpc.RpcError) as exc:
            stub.WriteProvenanceBatch(batch(records), timeout=10)
        assert details(exc.value) == (grpc.StatusCode.INVALID_ARGUMENT, reason, ["records"])
    with pytest.raises(grpc.RpcError) as exc:
        stub.WriteProvenanceBatch(batch([provenance_json(0)], request_id="k" * 129), timeout=10)
    assert details(exc.value)[2] == ["request_id"]
    assert stored_count(stub) == 0


def test_concurrent_retries_return_one_set_of_ids(stub):
    request = batch([provenance_json(i) for i in range(30)], request_id="ingest-2026-11-26-0001")
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        responses = list(
            pool.map(lambda _: stub.WriteProvenanceBatch(request, timeout=30), range(8))
        )
    assert len({tuple(r.ids) for r in responses}) == 1
    assert sum(not r.replayed for r in responses) == 1
    assert stored_count(stub) == 30
    with pytest.raises(grpc.RpcError) as exc:
        stub.WriteProvenanceBatch(
            batch([provenance_json(99)], request_id="ingest-2026-11-26-0001"), timeout=10
        )
    assert details(exc.value)[:2] == (grpc.StatusCode.ALREADY_EXISTS, "REQUEST_ID_REUSED")
    assert stored_count(stub) == 30


def test_broken_stream_resumes_without_gap_or_duplicate(stub):
    for k in range(5):
        stub.WriteProvenanceBatch(
            batch([provenance_json(k * 50 + i) for i in range(50)]), timeout=10
        )
    full = [m.record.id for m in query_all(stub, page_size=1000)]
    assert len(full) == 250 and len(set(full)) == 250
    call = stub.QueryProvenance(pb.QueryProvenanceRequest(page_size=1000), timeout=30)
    seen, token = [], ""
    for message in call:
        seen.append(message.record.id)
        token = message.page_token
        if len(seen) == 37:
            call.cancel()  # the stream breaks
            break
    rest = [m.record.id for m in query_all(stub, page_size=1000, page_token=token)]
    assert seen + rest == full
    # page by page with page_size 100: the same sequence
    paged, token = [], ""
    while True:
        page = query_all(stub, page_size=100, page_token=token)
        if not page:
            break
        paged += [m.record.id for m in page]
        token = page[-1].page_token
    assert paged == full


def test_query_filters_and_paging_errors(stub):
    stub.WriteProvenanceBatch(batch([provenance_json(i) for i in range(9)]), timeout=10)
    t1 = query_all(stub, tenant_id="tenant-1")
    assert len(t1) == 3 and all(m.record.tenant_id == "tenant-1" for m in t1)
    token = t1[0].page_token
    bad = {
        "page_token": pb.QueryProvenanceRequest(tenant_id="tenant-2", page_token=token),
        "page_token ": pb.QueryProvenanceRequest(page_token="!!not-a-token"),
        "page_size": pb.QueryProvenanceRequest(page_size=-1),
        "variant_slug": pb.QueryProvenanceRequest(variant_slug="v7"),
    }
    for field, request in bad.items():
        with pytest.raises(grpc.RpcError) as exc:
            list(stub.QueryProvenance(request, timeout=10))
        code, _, fields = details(exc.value)
        assert code == grpc.StatusCode.INVALID_ARGUMENT and fields[0] == field.strip()
    now = datetime.now(UTC)
    request = pb.QueryProvenanceRequest()
    request.start_time.FromDatetime(now)
    request.end_time.FromDatetime(now - timedelta(hours=1))
    with pytest.raises(grpc.RpcError) as exc:
        list(stub.QueryProvenance(request, timeout=10))
    assert details(exc.value)[2] == ["start_time", "end_time"]
    # a window in the future matches nothing; one around now matches everything
    request = pb.QueryProvenanceRequest()
    request.start_time.FromDatetime(now + timedelta(hours=1))
    assert list(stub.QueryProvenance(request, timeout=10)) == []
    request = pb.QueryProvenanceRequest()
    request.start_time.FromDatetime(now - timedelta(hours=1))
    request.end_time.FromDatetime(now + timedelta(hours=1))
    assert len(list(stub.QueryProvenance(request, timeout=10))) == 9


def test_drift_stats(stub):
    records = [provenance_json(i, v1_cost=10.0, v2_cost=10.0 + i) for i in range(11)]
    stub.WriteProvenanceBatch(batch(records), timeout=10)
    stats = stub.GetDriftStats(pb.GetDriftStatsRequest(variant_slug="v2"), timeout=10)
    assert stats.total == 11
    assert (stats.min_delta, stats.max_delta, stats.avg_delta) == (0.0, 10.0, 5.0)
    assert stats.p50_delta == pytest.approx(5.0) and stats.p90_delta == pytest.approx(9.0)
    assert stats.stddev_delta == pytest.approx(math.sqrt(11.0))
    assert stub.GetDriftStats(pb.GetDriftStatsRequest(variant_slug="v1"), timeout=10).total == 0
    with pytest.raises(grpc.RpcError) as exc:
        stub.GetDriftStats(pb.GetDriftStatsRequest(variant_slug="v4"), timeout=10)
    assert details(exc.value)[2] == ["variant_slug"]


@pytest.fixture
def reports(server):
    engine = make_engine(server.database_url)
    uow = SqlAlchemyUnitOfWorkFactory(engine)
    with uow() as w:
        for i in range(40):
            w.reports.add(canary_report(i))
        w.commit()
    engine.dispose()
    return [canary_report(i) for i in range(40)]


def test_canary_report_queries(stub, reports):
    got = stub.GetCanaryReport(pb.GetCanaryReportRequest(run_id="canary-00013"), timeout=10).report
    assert got.status == pb.CANARY_STATUS_FAIL and not got.passed
    assert list(got.failure_reasons) == ["KL divergence 0.31 > 0.2"]
    assert got.timestamp.ToDatetime(tzinfo=UTC) == reports[13].timestamp
    for run_id, code in (
        ("nope", grpc.StatusCode.NOT_FOUND),
        ("", grpc.StatusCode.INVALID_ARGUMENT),
    ):
        with pytest.raises(grpc.RpcError) as exc:
            stub.GetCanaryReport(pb.GetCanaryReportRequest(run_id=run_id), timeout=10)
        assert details(exc.value)[0] == code

    every = list(stub.QueryCanaryReports(pb.QueryCanaryReportsRequest(), timeout=10))
    assert [m.report.run_id for m in every] == [r.run_id for r in reversed(reports)]
    fails = list(
        stub.QueryCanaryReports(
            pb.QueryCanaryReportsRequest(status=pb.CANARY_STATUS_FAIL, page_size=4), timeout=10
        )
    )
    assert [m.report.run_id for m in fails] == [
        "canary-00037",
        "canary-00033",
        "canary-00029",
        "canary-00025",
    ]
    more = list(
        stub.QueryCanaryReports(
            pb.QueryCanaryReportsRequest(
                status=pb.CANARY_STATUS_FAIL, page_token=fails[-1].page_token
            ),
            timeout=10,
        )
    )
    assert [m.report.run_id for m in more] == [f"canary-{i:05d}" for i in (21, 17, 13, 9, 5, 1)]
    failed = list(stub.QueryCanaryReports(pb.QueryCanaryReportsRequest(passed=False), timeout=10))
    # fail, error and skipped (a skipped run is not a pass): 3 of every 4 of the 40 reports.
    assert len(failed) == 30 and not any(m.report.passed for m in failed)
    request = pb.QueryCanaryReportsRequest(status=pb.CANARY_STATUS_PASS)
    request.start_time.FromDatetime(reports[8].timestamp)
    request.end_time.FromDatetime(reports[16].timestamp)
    assert [m.report.run_id for m in stub.QueryCanaryReports(request, timeout=10)] == [
        "canary-00012",
        "canary-00008",
    ]
    with pytest.raises(grpc.RpcError) as exc:
        list(
            stub.QueryCanaryReports(
                pb.QueryCanaryReportsRequest(passed=True, page_token=fails[-1].page_token),
                timeout=10,
            )
        )
    assert details(exc.value)[:2] == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_PAGE_TOKEN")
