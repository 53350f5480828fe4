"""Drivers and the unit of work on real SQLite and PostgreSQL."""

import random
import threading
from datetime import timedelta
from types import SimpleNamespace

import numpy as np
import psycopg
import pytest
from sqlalchemy import exc as sa_exc
from sqlalchemy import func, select

from costsim_analytics.drivers.canary_report_driver import SqlCanaryReportDriver
from costsim_analytics.drivers.models import provenance_table
from costsim_analytics.drivers.provenance_driver import SqlProvenanceDriver
from costsim_analytics.engines.drift import DriftStatsQuery
from costsim_analytics.engines.errors import AlreadyExists, RequestIdReused
from costsim_analytics.engines.pagination import Cursor
from costsim_analytics.engines.provenance import ProvenanceFilter, WriteBatch, prepare_batch
from costsim_analytics.engines.reports import ReportFilter
from costsim_analytics.handlers.provenance import WriteProvenanceBatchHandler
from costsim_analytics.handlers.registry import OP_PROVENANCE_BATCH
from costsim_analytics.handlers.uow import SqlAlchemyUnitOfWorkFactory
from tests.factories import T0, canary_report, provenance_input
from tests.seam import served


def rows(n, now=T0, **overrides):
    return prepare_batch(
        [provenance_input(i, **overrides) for i in range(n)], max_batch=10_000, now=now
    )


def count(engine):
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(provenance_table)).scalar_one()


# Driver tests run inside the rolled-back outer transaction of the ``tx`` fixture: drivers
# never commit, so nothing they write outlives the test.


def test_insert_batch_returns_real_ids_in_request_order(tx):
    ids = SqlProvenanceDriver(tx).insert_batch(rows(50))
    assert len(set(ids)) == 50
    stored = dict(tx.execute(select(provenance_table.c.id, provenance_table.c.run_id)).all())
    assert [stored[i] for i in ids] == [f"run-{i}" for i in range(50)]


def test_rows_round_trip_exactly(tx):
    provenance = SqlProvenanceDriver(tx)
    [new] = rows(1)
    [row_id] = provenance.insert_batch([new])
    [[record]] = list(provenance.stream(ProvenanceFilter(), None, 10))
    assert record.id == row_id
    assert record.payload == new.payload
    assert record.created_at == new.created_at and record.created_at.tzinfo is not None
    assert (record.v1_cost, record.v2_cost, record.cost_delta) == (
        new.v1_cost,
        new.v2_cost,
        new.cost_delta,
    )
    assert (record.input_hash, record.output_hash) == (new.input_hash, new.output_hash)


def test_text_that_copy_must_escape_round_trips(tx):
    awkward = "tab\there\nnew line\r\\back\\slash \\N é 日本"
    payload = {"input": {"s": awkward, "n": None, "x": 1e-05}, "output": {"k": [awkward]}}
    [new] = prepare_batch(
        [
            provenance_input(
                0, run_id=awkward, tenant_id="\\N", commit_sha="", v1_cost=None, payload=payload
            )
        ],
        max_batch=1,
        now=T0,
    )
    provenance = SqlProvenanceDriver(tx)
    [row_id] = provenance.insert_batch([new])
    [[record]] = list(provenance.stream(ProvenanceFilter(), None, 10))
    assert (record.id, record.run_id, record.tenant_id, record.commit_sha) == (
        row_id,
        awkward,
        "\\N",
        "",
    )
    assert record.payload == new.payload == payload
    assert (record.v1_cost, record.cost_delta, record.runtime_ms) == (None, None, new.runtime_ms)


def test_leaving_without_commit_rolls_back(engine):
    uow = SqlAlchemyUnitOfWorkFactory(engine)
    with pytest.raises(RuntimeError), uow() as w:
        w.provenance.insert_batch(rows(3))
        raise RuntimeError("handler failed")
    with uow() as w:
        w.provenance.insert_batch(rows(2))  # never committed
    assert count(engine) == 0


# The database's refusal: through SQLAlchemy, or straight from psycopg on the COPY path.
WRITE_REFUSED = (sa_exc.DBAPIError, psycopg.Error)


def test_read_only_unit_of_work_cannot_write(engine):
    uow = SqlAlchemyUnitOfWorkFactory(engine)
    with (
        uow(read_only=True) as r,
        pytest.raises(WRITE_REFUSED, match=r"(?i)read-only|readonly|query_only|attempt to write"),
    ):
        r.provenance.insert_batch(rows(1))
    with (
        uow(read_only=True) as r,
        pytest.raises(WRITE_REFUSED, match=r"(?i)read-only|readonly|attempt to write"),
    ):
        r.reports.add(canary_report(1))
    assert count(engine) == 0
    # The pooled connection is writable again for the next writer.
    with uow() as w:
        w.provenance.insert_batch(rows(1))
        w.commit()
    assert count(engine) == 1


def test_stream_is_newest_first_filtered_and_resumable(tx):
    r = SimpleNamespace(provenance=SqlProvenanceDriver(tx))
    for minute in range(5):  # 5 batches of 10, each batch shares its created_at
        r.provenance.insert_batch(rows(10, now=T0 + timedelta(minutes=minute)))
    everything = [
        rec
        for chunk in r.provenance.stream(ProvenanceFilter(), None, 1000, chunk_size=7)
        for rec in chunk
    ]
    keys = [(rec.created_at, rec.id) for rec in everything]
    assert keys == sorted(keys, reverse=True) and len(keys) == 50
    # resume after the 23rd row: no gap, no duplicate
    cut = everything[22]
    rest = [
        rec
        for chunk in r.provenance.stream(ProvenanceFilter(), Cursor(cut.created_at, cut.id), 1000)
        for rec in chunk
    ]
    assert [x.id for x in everything[:23] + rest] == [x.id for x in everything]
    window = ProvenanceFilter(
        tenant_id="tenant-1",
        start_time=T0 + timedelta(minutes=1),
        end_time=T0 + timedelta(minutes=3),
    )
    got = [rec for chunk in r.provenance.stream(window, None, 1000) for rec in chunk]
    assert got and all(
        rec.tenant_id == "tenant-1"
        and T0 + timedelta(minutes=1) <= rec.created_at < T0 + timedelta(minutes=3)
        for rec in got
    )
    assert len(got) == 2 * len([i for i in range(10) if i % 3 == 1])
    # The caller's tenant scope: only those tenants, and none for an empty scope.
    scoped = ProvenanceFilter(tenant_scope=("tenant-1", "tenant-2"))
    seen = {rec.tenant_id for chunk in r.provenance.stream(scoped, None, 1000) for rec in chunk}
    assert seen == {"tenant-1", "tenant-2"}
    nothing = ProvenanceFilter(tenant_scope=())
    assert [c for c in r.provenance.stream(nothing, None, 1000) if c] == []


def test_drift_stats_match_numpy(tx):
    rng = random.Random(7)
    provenance = SqlProvenanceDriver(tx)
    batch = [
        provenance_input(
            i, variant_slug="v2", v1_cost=rng.uniform(0, 100), v2_cost=rng.uniform(0, 100)
        )
        for i in range(101)
    ] + [
        provenance_input(200, variant_slug="v2", v2_cost=None),
        provenance_input(201, variant_slug="v1"),
    ]
    prepared = prepare_batch(batch, max_batch=1000, now=T0)
    provenance.insert_batch(prepared)
    deltas = np.array([r.cost_delta for r in prepared[:101]])
    stats = provenance.drift_stats(DriftStatsQuery(variant_slug="v2"))
    empty = provenance.drift_stats(DriftStatsQuery(tenant_id="nobody"))
    scoped = provenance.drift_stats(DriftStatsQuery(variant_slug="v2", tenant_scope=("tenant-1",)))
    in_scope = np.array([r.cost_delta for r in prepared[:101] if r.tenant_id == "tenant-1"])
    assert scoped.total == len(in_scope) > 0
    assert scoped.avg_delta == pytest.approx(in_scope.mean())
    assert stats.total == 101
    assert stats.avg_delta == pytest.approx(deltas.mean())
    assert stats.min_delta == pytest.approx(deltas.min())
    assert stats.max_delta == pytest.approx(deltas.max())
    assert stats.stddev_delta == pytest.approx(deltas.std(ddof=1))
    assert stats.p50_delta == pytest.approx(np.percentile(deltas, 50))
    assert stats.p90_delta == pytest.approx(np.percentile(deltas, 90))
    assert empty.total == 0 and empty.p90_delta == 0.0


def test_reports_add_get_stream_and_unique_run_id(tx):
    r = SimpleNamespace(reports=SqlCanaryReportDriver(tx))
    for i in range(12):
        r.reports.add(canary_report(i))
    # A savepoint: on PostgreSQL a failed statement would end the outer transaction.
    with pytest.raises(AlreadyExists), tx.begin_nested():
        r.reports.add(canary_report(3))
    got = r.reports.get_by_run_id("canary-00005")
    assert got is not None and got.failure_reasons == canary_report(5).failure_reasons
    assert got.timestamp == canary_report(5).timestamp
    assert r.reports.get_by_run_id("nope") is None
    fails = [x for chunk in r.reports.stream(ReportFilter(status="fail"), None, 100) for x in chunk]
    assert [x.run_id for x in fails] == ["canary-00009", "canary-00005", "canary-00001"]
    not_passed = [
        x for chunk in r.reports.stream(ReportFilter(passed=False), None, 100) for x in chunk
    ]
    assert {x.status for x in not_passed} == {"fail", "error", "skipped"}


@pytest.mark.parametrize("same_records", [True, False])
def test_concurrent_retries_write_once(engine, same_records):
    uow = SqlAlchemyUnitOfWorkFactory(engine)
    handler = served(OP_PROVENANCE_BATCH, WriteProvenanceBatchHandler(uow), uow)
    results, errors = [], []
    barrier = threading.Barrier(6)

    def call(k):
        records = (
            [provenance_input(i) for i in range(20)]
            if same_records or k == 0
            else [provenance_input(99)]
        )
        barrier.wait()
        try:
            results.append(handler(WriteBatch(records, request_id="retry-me")))
        except RequestIdReused as exc:
            errors.append(exc)

    threads = [threading.Thread(target=call, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if same_records:
        assert errors == []
        assert len({r.ids for r in results}) == 1
        assert sum(not r.replayed for r in results) == 1
        assert count(engine) == 20
    else:
        # Thread 0 sends 20 records, the five others one same record. Whichever claims the key
        # first is written and answered (its twins replay); every other batch is refused.
        assert (len(results), len(errors), count(engine)) in {(5, 1, 1), (1, 5, 20)}
