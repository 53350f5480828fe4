"""Retention on real SQLite and PostgreSQL (monthly partitions there)."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select

from costsim_analytics.drivers import partitions
from costsim_analytics.drivers.artifacts import LocalArtifactStore
from costsim_analytics.drivers.models import idempotency_table, provenance_table, reports_table
from costsim_analytics.engines.errors import InvalidArgument
from costsim_analytics.engines.provenance import prepare_batch
from costsim_analytics.engines.retention import RetentionPolicy
from costsim_analytics.handlers.call import Call
from costsim_analytics.handlers.retention import RetentionHandler
from costsim_analytics.handlers.uow import SqlAlchemyUnitOfWorkFactory
from tests.factories import canary_report, provenance_input

NOW = datetime.now(UTC)
AGES_DAYS = (400, 100, 10, 0)  # provenance written at these ages, 20 rows each


def count(engine, table) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


@pytest.fixture
def seeded(engine, tmp_path):
    uow = SqlAlchemyUnitOfWorkFactory(engine)
    with engine.begin() as conn:
        partitions.ensure_range(conn, NOW - timedelta(days=400), NOW)
    store = LocalArtifactStore(tmp_path / "artifacts")
    with uow() as w:
        for age in AGES_DAYS:
            rows = prepare_batch(
                [provenance_input(i) for i in range(20)],
                max_batch=100,
                now=NOW - timedelta(days=age),
            )
            w.provenance.insert_batch(rows)
        for i, age in enumerate((90, 45, 5)):
            report = canary_report(i, timestamp=NOW - timedelta(days=age))
            store.save(report.run_id, {"report.json": b"{}"})
            w.reports.add(report)
        w.idempotency.claim("analytics.provenance_batch", "old", "h", NOW - timedelta(days=90))
        w.idempotency.claim("analytics.provenance_batch", "new", "h", NOW)
        w.commit()
    handler = RetentionHandler(uow, store, clock=lambda: NOW)
    return (lambda policy: handler(policy, Call())), store


def test_dry_run_counts_and_removes_nothing(engine, seeded):
    handler, store = seeded
    result = handler(
        RetentionPolicy(provenance_days=60, reports_days=30, idempotency_days=30, dry_run=True)
    )
    removed = sum(n for _, n in result.provenance_partitions) + result.provenance_rows_deleted
    assert removed == 40  # the rows 400 and 100 days old
    assert len(result.reports_deleted) == 2 and result.idempotency_keys_deleted == 1
    assert count(engine, provenance_table) == 80 and count(engine, reports_table) == 3
    assert len(list(store.root.iterdir())) == 3


def test_retention_removes_old_data_and_reports_what(engine, seeded):
    handler, store = seeded
    result = handler(RetentionPolicy(provenance_days=60, reports_days=30, idempotency_days=30))
    removed = sum(n for _, n in result.provenance_partitions) + result.provenance_rows_deleted
    assert removed == 40
    assert count(engine, provenance_table) == 40
    if engine.dialect.name == "postgresql":
        # whole months went: the partitions of the rows 400 and 100 days old
        names = [name for name, _ in result.provenance_partitions]
        assert partitions.partition_for(NOW - timedelta(days=400)).name in names
        assert partitions.partition_for(NOW - timedelta(days=100)).name in names
        with engine.connect() as conn:
            left = {p.name for p in partitions.list_partitions(conn)}
        assert not set(names) & left
        assert partitions.partition_for(NOW).name in left
    assert sorted(result.reports_deleted) == ["canary-00000", "canary-00001"]
    assert result.artifact_dirs_removed == 2
    assert [p.name for p in store.root.iterdir()] == ["canary-00002"]
    assert count(engine, reports_table) == 1
    assert result.idempotency_keys_deleted == 1 and count(engine, idempotency_table) == 1
    again = handler(RetentionPolicy(provenance_days=60, reports_days=30, idempotency_days=30))
    assert (again.provenance_partitions, again.provenance_rows_deleted, again.reports_deleted) == (
        (),
        0,
        (),
    )


def test_policy_must_name_something_sensible(seeded):
    handler, _ = seeded
    with pytest.raises(InvalidArgument):
        handler(RetentionPolicy())
    with pytest.raises(InvalidArgument) as exc:
        handler(RetentionPolicy(provenance_days=0))
    assert exc.value.violations[0].field == "provenance_days"


def test_cli_retention(database_url, seeded, tmp_path):
    _, store = seeded
    cli = Path(sys.executable).parent / "costsim-analytics"
    done = subprocess.run(
        [
            str(cli),
            "retention",
            "--reports-days",
            "30",
            "--database-url",
            database_url,
            "--artifacts-dir",
            str(store.root),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert sorted(result["reports_deleted"]) == ["canary-00000", "canary-00001"]
    refused = subprocess.run(
        [str(cli), "retention", "--database-url", database_url],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == 2 and "INVALID_ARGUMENT" in refused.stderr


# --- partition upkeep ------------------------------------------------------------------------


def test_upkeep_creates_partitions_ahead_and_the_health_probe_never_does(engine, tmp_path):
    from costsim_analytics.bootstrap import health_probe
    from costsim_analytics.handlers.retention import PartitionUpkeepHandler

    upkeep = PartitionUpkeepHandler(SqlAlchemyUnitOfWorkFactory(engine), clock=lambda: NOW)
    if engine.dialect.name != "postgresql":
        assert upkeep(None, Call()).created == ()  # one plain table: nothing to do
        return
    ahead = partitions.partition_for(partitions.add_months(partitions.month_start(NOW), 2))
    with engine.begin() as conn:
        conn.exec_driver_sql(f"DROP TABLE IF EXISTS {ahead.name}")

    def names() -> set[str]:
        with engine.connect() as conn:
            return {p.name for p in partitions.list_partitions(conn)}

    probe = health_probe(engine)
    for _ in range(3):
        probe()
    assert ahead.name not in names()  # the probe only reads
    assert ahead.name in upkeep(None, Call()).created
    assert ahead.name in names()
    assert upkeep(None, Call()).created == ()  # idempotent


def test_a_partition_in_use_is_deferred_and_writers_never_queue_for_long(
    engine, seeded, monkeypatch
):
    handler, _ = seeded
    if engine.dialect.name != "postgresql":  # one table, no DDL: nothing is ever deferred
        result = handler(RetentionPolicy(provenance_days=60))
        assert result.provenance_partitions_deferred == () and result.provenance_rows_deleted
        return
    import threading
    import time

    from costsim_analytics.handlers.uow import SqlAlchemyUnitOfWorkFactory as Uow

    monkeypatch.setattr(partitions, "DROP_LOCK_TIMEOUT_MS", 200)
    monkeypatch.setattr(partitions, "DROP_RETRY_PAUSE_S", 0.2)
    busy = partitions.partition_for(NOW - timedelta(days=100)).name
    waits: list[float] = []
    with engine.connect() as reader:
        reader.begin()  # an open stream over old data: it holds the partition's lock
        reader.exec_driver_sql(f"SELECT count(*) FROM {busy}").scalar_one()
        done = threading.Event()

        def write_meanwhile() -> None:
            uow = Uow(engine)
            while not done.is_set():
                started = time.monotonic()
                with uow() as w:
                    w.provenance.insert_batch(
                        prepare_batch([provenance_input(7)], max_batch=1, now=NOW)
                    )
                    w.commit()
                waits.append(time.monotonic() - started)

        writer = threading.Thread(target=write_meanwhile)
        writer.start()
        try:
            result = handler(RetentionPolicy(provenance_days=60))
        finally:
            done.set()
            writer.join()
    assert result.provenance_partitions_deferred == (busy,)
    assert busy not in {name for name, _ in result.provenance_partitions}
    assert partitions.partition_for(NOW - timedelta(days=400)).name in {
        name for name, _ in result.provenance_partitions
    }
    assert waits and max(waits) < 2.0, waits  # a write waited at most about one lock timeout
    # Once the reader is gone the next pass drops it.
    again = handler(RetentionPolicy(provenance_days=60))
    assert [name for name, _ in again.provenance_partitions] == [busy]
    assert again.provenance_partitions_deferred == ()
