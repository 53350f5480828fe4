from datetime import UTC, datetime, timedelta

import pytest

from costsim_analytics.engines.errors import InvalidArgument, NotFound, RequestIdReused
from costsim_analytics.engines.pagination import decode_token, filter_fingerprint
from costsim_analytics.engines.provenance import ProvenanceFilter, ProvenanceQuery, WriteBatch
from costsim_analytics.handlers.provenance import (
    QueryProvenanceHandler,
    WriteProvenanceBatchHandler,
)
from costsim_analytics.handlers.registry import OperationRegistry
from costsim_analytics.handlers.reports import GetCanaryReportHandler
from tests.factories import canary_report, provenance_input
from tests.unit.fakes import FakeStore

NOW = datetime(2026, 11, 26, tzinfo=UTC)


def write_handler(store, **kw):
    return WriteProvenanceBatchHandler(store, clock=lambda: NOW, **kw)


def test_write_commits_one_transaction_and_returns_ids_in_order():
    store = FakeStore()
    result = write_handler(store)(WriteBatch([provenance_input(i) for i in range(3)]))
    assert result.ids == (1, 2, 3)
    assert not result.replayed
    [uow] = store.opened
    assert uow.committed and not uow.read_only
    assert [r.run_id for r in store.provenance.inserted] == ["run-0", "run-1", "run-2"]


def test_invalid_batch_opens_no_transaction():
    store = FakeStore()
    with pytest.raises(InvalidArgument):
        write_handler(store)(WriteBatch([provenance_input(0, source="nope")]))
    assert store.opened == []


def test_same_request_id_same_records_replays():
    store = FakeStore()
    handler = write_handler(store)
    batch = WriteBatch([provenance_input(i) for i in range(2)], request_id="req-1")
    first = handler(batch)
    again = handler(batch)
    assert again.ids == first.ids
    assert again.replayed
    assert len(store.provenance.inserted) == 2


def test_same_request_id_other_records_is_rejected_and_writes_nothing():
    store = FakeStore()
    handler = write_handler(store)
    handler(WriteBatch([provenance_input(0)], request_id="req-1"))
    with pytest.raises(RequestIdReused) as exc:
        handler(WriteBatch([provenance_input(1)], request_id="req-1"))
    assert exc.value.reason == "REQUEST_ID_REUSED"
    assert len(store.provenance.inserted) == 1
    assert not store.opened[-1].committed


def test_query_opens_read_only_unit_of_work_and_closes_it():
    store = FakeStore()
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    store.provenance.rows = [replace_record(i, t0 + timedelta(seconds=i // 2)) for i in range(1, 8)]
    handler = QueryProvenanceHandler(store)
    stream = handler(ProvenanceQuery(page_size=3))
    items = list(stream)
    assert [r.id for r, _ in items] == [7, 6, 5]
    [uow] = store.opened
    assert uow.read_only and store.closed == [uow]
    # the last token resumes right after id 5
    fp = filter_fingerprint("provenance", ProvenanceFilter().as_dict())
    assert decode_token(items[-1][1], "provenance", fp).id == 5
    rest = list(handler(ProvenanceQuery(page_size=10, page_token=items[-1][1])))
    assert [r.id for r, _ in rest] == [4, 3, 2, 1]


def test_bad_token_fails_before_any_transaction():
    store = FakeStore()
    with pytest.raises(InvalidArgument):
        QueryProvenanceHandler(store)(ProvenanceQuery(page_token="garbage"))
    assert store.opened == []


def test_get_report_read_only_and_not_found():
    store = FakeStore()
    store.reports.add(canary_report(1))
    handler = GetCanaryReportHandler(store)
    assert handler("canary-00001").run_id == "canary-00001"
    with pytest.raises(NotFound):
        handler("canary-99999")
    with pytest.raises(InvalidArgument):
        handler("")
    assert all(uow.read_only for uow in store.opened)


def test_registry_refuses_duplicates_and_unknown_names():
    registry = OperationRegistry()
    registry.register("analytics.x", lambda c: c)
    with pytest.raises(ValueError, match=r"already"):
        registry.register("analytics.x", lambda c: c)
    with pytest.raises(KeyError, match=r"analytics\.y"):
        registry.get("analytics.y")
    assert "analytics.x" in registry


def replace_record(i, created_at):
    from costsim_analytics.engines.provenance import ProvenanceRecord

    return ProvenanceRecord(
        id=i,
        run_id=f"r{i}",
        tenant_id="t",
        variant_slug="v2",
        source="sandbox",
        model_version="",
        adapter_version="",
        commit_sha="",
        input_hash="0" * 64,
        output_hash="0" * 64,
        v1_cost=None,
        v2_cost=None,
        cost_delta=None,
        payload={},
        runtime_ms=0,
        created_at=created_at,
    )
