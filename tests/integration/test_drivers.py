"""Drivers and the unit of work on real SQLite and PostgreSQL."""

import random
import threading
from datetime import timedelta

import numpy as np
import pytest
from sqlalchemy import func, select

from costsim_analytics.drivers.models import provenance_table
from costsim_analytics.engines.drift import DriftStatsQuery
from costsim_analytics.engines.errors import AlreadyExists, RequestIdReused
from costsim_analytics.engines.pagination import Cursor
from costsim_analytics.engines.provenance import ProvenanceFilter, WriteBatch, prepare_batch
from costsim_analytics.engines.reports import ReportFilter
from costsim_analytics.handlers.provenance import WriteProvenanceBatchHandler
from costsim_analytics.handlers.uow import SqlAlchemyUnitOfWorkFactory
from tests.factories import T0, canary_report, provenance_input


def rows(n, now=T0, **overrides):
    return prepare_batch(
        [provenance_input(i, **overrides) for i in range(n)], max_batch=10_000, now=now
    )


def count(engine):
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(provenance_table)).scalar_one()


def test_insert_batch_returns_real_ids_in_request_order(engine):
    uow = SqlAlchemyUnitOfWorkFactory(engine)
    with uow() as w:
        ids = w.provenance.insert_batch(rows(50))
        w.commit()
    assert len(set(ids)) == 50
    with engine.connect() as conn:
        stored = dict(conn.execute(select(provenance_table.c.id, provenance_table.c.run_id)).all())
    assert [stored[i] for i in ids] == [f"run-{i}" for i in range(50)]


def test_rows_round_trip_exactly(engine):
    uow = SqlAlchemyUnitOfWorkFactory(engine)
    [new] = rows(1)
    with uow() as w:
        [row_id] = w.provenance.insert_batch([new])
        w.commit()
    with uow(read_only=True) as r:
        [[record]] = list(r.provenance.stream(ProvenanceFilter(), None, 10))
    assert record.id == row_id
    assert record.payload == new.payload
    assert record.created_at == new.created_at and record.created_at.tzinfo is not None
    assert (record.v1_cost, record.v2_cost, record.cost_delta) == (
        new.v1_cost,
        new.v2_cost,
        new.cost_delta,
    )
    assert (record.input_hash, record.output_hash) == (new.input_hash, new.output_hash)


def test_leaving_without_commit_rolls_back(engine):
    uow = SqlAlchemyUnitOfWorkFactory(engine)
    with pytest.raises(RuntimeError), uow() as w:
        w.provenance.insert_batch(rows(3))
        raise RuntimeError("handler failed")
    with uow() as w:
        w.provenance.insert_batch(rows(2))  # never committed
    assert count(engine) == 0


def test_read_only_unit_of_work_cannot_write(engine):
    uow = SqlAlchemyUnitOfWorkFactory(engine)
    with (
        uow(read_only=True) as r,
        pytest.raises(Exception, match=r"(?i)read-only|readonly|query_only|attempt to write"),
    ):
        r.provenance.insert_batch(rows(1))
    with (
        uow(read_only=True) as r,
        pytest.raises(Exception, match=r"(?i)read-only|readonly|attempt to write"),
    ):
        r.reports.add(canary_report(1))
    assert count(engine) == 0
    # The pooled connection is writable again for the next writer.
    with uow() as w:
        w.provenance.insert_batch(rows(1))
        w.commit()
    assert count(engine) == 1


def test_stream_is_newest_first_filtered_and_resumable(engine):
    uow = SqlAlchemyUnitOfWorkFactory(engine)
    with uow() as w:
        for minute in range(5):  # 5 batches of 10, each batch shares its created_at
            w.provenance.insert_batch(rows(10, now=T0 + timedelta(minutes=minute)))
        w.commit()
    with uow(read_only=True) as r:
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
            for chunk in r.provenance.stream(
                ProvenanceFilter(), Cursor(cut.created_at, cut.id), 1000
            )
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


def test_drift_stats_match_numpy(engine):
    rng = random.Random(7)
    uow = SqlAlchemyUnitOfWorkFactory(engine)
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
    with uow() as w:
        w.provenance.insert_batch(prepared)
        w.commit()
    deltas = np.array([r.cost_delta for r in prepared[:101]])
    with uow(read_only=True) as r:
        stats = r.provenance.drift_stats(DriftStatsQuery(variant_slug="v2"))
        empty = r.provenance.drift_stats(DriftStatsQuery(tenant_id="nobody"))
    assert stats.total == 101
    assert stats.avg_delta == pytest.approx(deltas.mean())
    assert stats.min_delta == pytest.approx(deltas.min())
    assert stats.max_delta == pytest.approx(deltas.max())
    assert stats.stddev_delta == pytest.approx(deltas.std(ddof=1))
    assert stats.p50_delta == pytest.approx(np.percentile(deltas, 50))
    assert stats.p90_delta == pytest.approx(np.percentile(deltas, 90))
    assert empty.total == 0 and empty.p90_delta == 0.0


def test_reports_add_get_stream_and_unique_run_id(engine):
    uow = SqlAlchemyUnitOfWorkFactory(engine)
    with uow() as w:
        for i in range(12):
            w.reports.add(canary_report(i))
        w.commit()
    with pytest.raises(AlreadyExists), uow() as w:
        w.reports.add(canary_report(3))
    with uow(read_only=True) as r:
        got = r.reports.get_by_run_id("canary-00005")
        assert got is not None and got.failure_reasons == canary_report(5).failure_reasons
        assert got.timestamp == canary_report(5).timestamp
        assert r.reports.get_by_run_id("nope") is None
        fails = [
            x for chunk in r.reports.stream(ReportFilter(status="fail"), None, 100) for x in chunk
        ]
        assert [x.run_id for x in fails] == ["canary-00009", "canary-00005", "canary-00001"]
        not_passed = [
            x for chunk in r.reports.stream(ReportFilter(passed=False), None, 100) for x in chunk
        ]
        assert {x.status for x in not_passed} == {"fail", "error", "skipped"}


@pytest.mark.parametrize("same_records", [True, False])
def test_concurrent_retries_write_once(engine, same_records):
    handler = WriteProvenanceBatchHandler(SqlAlchemyUnitOfWorkFactory(engine))
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
