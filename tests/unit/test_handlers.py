from datetime import UTC, datetime, timedelta

import pytest

from costsim_analytics.engines.errors import InvalidArgument, NotFound, RequestIdReused
from costsim_analytics.engines.idempotency import StoredRequest
from costsim_analytics.engines.pagination import decode_token, filter_fingerprint
from costsim_analytics.engines.provenance import ProvenanceFilter, ProvenanceQuery, WriteBatch
from costsim_analytics.engines.provenance_digest import command_fingerprint, command_fingerprint_v1
from costsim_analytics.engines.reports import GetReport
from costsim_analytics.handlers.call import Call
from costsim_analytics.handlers.idempotency import ReplayTable, idempotency, request_ids
from costsim_analytics.handlers.provenance import (
    BATCH_REPLAY,
    QueryProvenanceHandler,
    WriteProvenanceBatchHandler,
)
from costsim_analytics.handlers.registry import OP_PROVENANCE_BATCH, Operation, OperationRegistry
from costsim_analytics.handlers.reports import GetCanaryReportHandler
from tests.factories import canary_report, provenance_input
from tests.unit.fakes import FakeStore

NOW = datetime(2026, 11, 26, tzinfo=UTC)


CALL = Call()


def write_handler(store, **kw):
    """The batch handler with the middleware bootstrap.py gives it (request ids, idempotency)."""
    registry = OperationRegistry()
    registry.register(
        OP_PROVENANCE_BATCH, WriteProvenanceBatchHandler(store, clock=lambda: NOW, **kw)
    )
    table = ReplayTable().add(OP_PROVENANCE_BATCH, BATCH_REPLAY)
    registry.wrap(request_ids(table), idempotency(store, table))
    handler = registry.get(OP_PROVENANCE_BATCH)
    return lambda batch: handler(batch, CALL)


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


def test_a_key_stored_with_the_first_digest_formula_still_replays():
    store = FakeStore()
    handler = write_handler(store)
    batch = WriteBatch([provenance_input(i) for i in range(2)], request_id="req-1")
    first = handler(batch)
    key = (OP_PROVENANCE_BATCH.name, "req-1")
    assert store.idempotency.keys[key].request_hash == command_fingerprint(batch)
    # As a server before the v2 formula stored it.
    keys = store.idempotency.keys
    keys[key] = StoredRequest(command_fingerprint_v1(batch), keys[key].response)
    again = handler(batch)
    assert again.replayed and again.ids == first.ids
    other = WriteBatch([provenance_input(5)], request_id="req-1")
    with pytest.raises(RequestIdReused):
        handler(other)
    # An untagged digest is compared with the first formula only, never with the current one.
    keys[key] = StoredRequest(command_fingerprint(batch)[2:] + "00", keys[key].response)
    with pytest.raises(RequestIdReused):
        handler(batch)
    assert len(store.provenance.inserted) == 2


def test_query_opens_read_only_unit_of_work_and_closes_it():
    store = FakeStore()
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    store.provenance.rows = [replace_record(i, t0 + timedelta(seconds=i // 2)) for i in range(1, 8)]
    handler = QueryProvenanceHandler(store)
    stream = handler(ProvenanceQuery(page_size=3), CALL)
    items = list(stream)
    assert [r.id for r, _ in items] == [7, 6, 5]
    [uow] = store.opened
    assert uow.read_only and store.closed == [uow]
    # the last token resumes right after id 5
    fp = filter_fingerprint("provenance", ProvenanceFilter().as_dict())
    assert decode_token(items[-1][1], "provenance", fp).id == 5
    rest = list(handler(ProvenanceQuery(page_size=10, page_token=items[-1][1]), CALL))
    assert [r.id for r, _ in rest] == [4, 3, 2, 1]


def test_bad_token_fails_before_any_transaction():
    store = FakeStore()
    with pytest.raises(InvalidArgument):
        QueryProvenanceHandler(store)(ProvenanceQuery(page_token="garbage"), CALL)
    assert store.opened == []


def test_get_report_read_only_and_not_found():
    store = FakeStore()
    store.reports.add(canary_report(1))
    handler = GetCanaryReportHandler(store)
    assert handler(GetReport("canary-00001"), CALL).run_id == "canary-00001"
    with pytest.raises(NotFound):
        handler(GetReport("canary-99999"), CALL)
    with pytest.raises(InvalidArgument) as exc:
        handler(GetReport(""), CALL)
    assert [v.field for v in exc.value.violations] == ["run_id"]
    assert all(uow.read_only for uow in store.opened)


X: Operation[str, str] = Operation("analytics.x")
Y: Operation[str, str] = Operation("analytics.y")


def test_registry_refuses_duplicates_and_unknown_names():
    registry = OperationRegistry()
    registry.register(X, lambda c, call: c)
    with pytest.raises(ValueError, match=r"already"):
        registry.register(X, lambda c, call: c)
    with pytest.raises(KeyError, match=r"analytics\.y"):
        registry.get(Y)
    assert X in registry
    assert Y not in registry


def test_middleware_wraps_every_handler_first_given_outermost():
    registry = OperationRegistry()
    registry.register(X, lambda c, call: c + "!")
    registry.register(Y, lambda c, call: c + "?")

    def tag(label):
        def wrap(op, handler):
            return lambda c, call: f"{label}({handler(c, call)})"

        return wrap

    registry.wrap(tag("outer"), tag("inner"))
    assert registry.get(X)("a", CALL) == "outer(inner(a!))"
    assert registry.get(Y)("b", CALL) == "outer(inner(b?))"


def test_request_id_rule_runs_before_the_handler():
    store = FakeStore()
    with pytest.raises(InvalidArgument) as exc:
        write_handler(store)(WriteBatch([provenance_input(0)], request_id="r" * 129))
    assert [v.field for v in exc.value.violations] == ["request_id"]
    assert store.opened == []


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
