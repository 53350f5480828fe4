"""Read replicas on a real PostgreSQL streaming replica (tests/replica.py).

The handlers run in process, through the registry ``bootstrap.build_registry`` makes, with a
:class:`ReplicaRouter` on the session's standby; writes go through the primary.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import Engine

from costsim_analytics.api.metrics import ServiceMetrics
from costsim_analytics.bootstrap import build_registry
from costsim_analytics.drivers.database import EngineOptions, make_engine
from costsim_analytics.drivers.replicas import ReplicaRouter
from costsim_analytics.engines.errors import NotFound
from costsim_analytics.engines.golden.commands import ListGoldenDatasets
from costsim_analytics.engines.reports import CanaryReport, GetReport, ReportQuery
from costsim_analytics.handlers.call import Call
from costsim_analytics.handlers.registry import (
    OP_CANARY_REPORT,
    OP_CANARY_REPORTS,
    OP_GOLDEN_LIST,
    OperationRegistry,
)
from costsim_analytics.handlers.uow import SqlAlchemyUnitOfWorkFactory
from costsim_analytics.settings import Settings
from tests.conftest import truncate_all
from tests.factories import canary_report
from tests.integration.test_stale_connections import terminate
from tests.replica import StreamingReplica


@dataclass
class Routed:
    """A registry reading through the replica, and what it needs."""

    primary: Engine
    router: ReplicaRouter
    metrics: ServiceMetrics
    registry: OperationRegistry
    replica: StreamingReplica
    settings: Settings

    def reads(self, target: str) -> float:
        value = self.metrics.registry.get_sample_value(
            "costsim_database_reads_total", {"target": target}
        )
        return value or 0.0

    def lag(self) -> float:
        value = self.metrics.registry.get_sample_value(
            "costsim_replica_lag_seconds", {"replica": self.router.replicas[0].name}
        )
        assert value is not None
        return value

    def add(self, *reports: CanaryReport) -> None:
        with SqlAlchemyUnitOfWorkFactory(self.primary)() as uow:
            for report in reports:
                uow.reports.add(report)
            uow.commit()

    def get(self, run_id: str) -> CanaryReport:
        return self.registry.get(OP_CANARY_REPORT)(GetReport(run_id), Call())

    def run_ids(self, page_size: int = 0, token: str = "") -> tuple[list[str], str]:
        stream = self.registry.get(OP_CANARY_REPORTS)(
            ReportQuery(page_size=page_size, page_token=token), Call()
        )
        items = list(stream)
        return [r.run_id for r, _ in items], (items[-1][1] if items else "")

    def usable(self) -> bool:
        return self.router.statuses()[0].usable


# Loose enough for a standby replaying other work of a busy shared server; the lag test
# sets its own tight bound.
LOOSE_LAG_S = 60.0


def eventually(routed: Routed, *, usable: bool, timeout_s: float = 10.0) -> None:
    """Probe until the replica is (or is not) usable."""
    deadline = time.monotonic() + timeout_s
    while True:
        routed.router.refresh()
        if routed.usable() is usable:
            return
        assert time.monotonic() < deadline, (
            f"usable stayed {not usable}: {routed.router.statuses()}"
        )
        time.sleep(0.05)


@pytest.fixture
def make_routed(
    replicated_database: tuple[str, str], replica: StreamingReplica, tmp_path: Path
) -> Iterator[Callable[[float], Routed]]:
    primary_url, replica_url = replicated_database
    primary = make_engine(primary_url)
    truncate_all(primary)
    settings = Settings(database_url=primary_url, artifacts_dir=tmp_path / "artifacts")
    replica.wait_caught_up()
    routers: list[ReplicaRouter] = []

    def make(max_lag_s: float = LOOSE_LAG_S) -> Routed:
        metrics = ServiceMetrics()
        router = ReplicaRouter(
            [replica_url], EngineOptions(pool_size=2), max_lag_s, on_read=metrics.count_read
        )
        metrics.watch_replicas(router.statuses, [r.name for r in router.replicas])
        routers.append(router)
        router.refresh()
        registry = build_registry(primary, settings, replicas=router)
        return Routed(primary, router, metrics, registry, replica, settings)

    yield make
    for router in routers:
        router.stop()
    primary.dispose()


def test_routed_reads_are_answered_by_the_replica(make_routed: Callable[[float], Routed]) -> None:
    routed = make_routed(LOOSE_LAG_S)
    routed.add(canary_report(1), canary_report(2))
    routed.replica.wait_caught_up()
    eventually(routed, usable=True)
    # Replay paused: a row written now is on the primary only; the replica, still within its
    # lag bound (its last replayed transaction is a moment old), answers without it.
    routed.replica.pause_replay()
    try:
        routed.add(canary_report(3))
        routed.router.refresh()
        assert routed.usable()
        ids, _ = routed.run_ids()
        assert ids == ["canary-00002", "canary-00001"]
        assert routed.reads("replica") == 1
        assert routed.reads("primary") == 0
        # A lookup by id of the row the replica lacks: NOT_FOUND there, asked of the primary.
        assert routed.get("canary-00003").run_id == "canary-00003"
        assert (routed.reads("replica"), routed.reads("primary")) == (2, 1)
        # A row that is nowhere is NOT_FOUND from both.
        with pytest.raises(NotFound):
            routed.get("canary-99999")
        assert (routed.reads("replica"), routed.reads("primary")) == (3, 2)
    finally:
        routed.replica.resume_replay()
    routed.replica.wait_caught_up()
    assert routed.run_ids()[0] == ["canary-00003", "canary-00002", "canary-00001"]


def test_a_replica_lagging_too_far_is_skipped(make_routed: Callable[[float], Routed]) -> None:
    routed = make_routed(1.0)
    routed.add(canary_report(1))
    routed.replica.wait_caught_up()
    eventually(routed, usable=True)
    assert routed.lag() <= 1.0
    routed.replica.pause_replay()
    try:
        routed.add(canary_report(2))
        # Replay stopped, its lag grows from the last transaction it replayed (a moment ago).
        eventually(routed, usable=False)
        assert routed.lag() > 1.0
        before = routed.reads("replica")
        assert routed.run_ids()[0] == ["canary-00002", "canary-00001"]  # the primary's answer
        assert routed.registry.get(OP_GOLDEN_LIST)(ListGoldenDatasets(), Call()) == []
        assert routed.reads("replica") == before
        assert routed.reads("primary") == 2
    finally:
        routed.replica.resume_replay()
    routed.replica.wait_caught_up()
    eventually(routed, usable=True)
    assert routed.lag() <= 1.0


def test_page_tokens_carry_over_between_replica_and_primary(
    make_routed: Callable[[float], Routed],
) -> None:
    routed = make_routed(LOOSE_LAG_S)
    routed.add(*(canary_report(i) for i in range(6)))
    routed.replica.wait_caught_up()
    routed.router.refresh()
    on_primary = build_registry(routed.primary, routed.settings)
    expected = [f"canary-{i:05d}" for i in reversed(range(6))]

    first, token = routed.run_ids(page_size=2)  # from the replica
    assert routed.reads("replica") == 1
    stream = on_primary.get(OP_CANARY_REPORTS)(ReportQuery(page_size=2, page_token=token), Call())
    second = list(stream)
    third, _ = routed.run_ids(page_size=2, token=second[-1][1])  # a primary token, replica
    assert first + [r.run_id for r, _ in second] + third == expected
    assert routed.reads("replica") == 2
    assert routed.reads("primary") == 0


def test_reads_keep_working_when_the_replica_stops_mid_run(
    make_routed: Callable[[float], Routed],
) -> None:
    routed = make_routed(LOOSE_LAG_S)
    routed.add(*(canary_report(i) for i in range(3)))
    routed.replica.wait_caught_up()
    eventually(routed, usable=True)
    routed.router.start()
    failures: list[BaseException] = []
    answers = 0
    stop = threading.Event()

    def read() -> None:
        nonlocal answers
        while not stop.is_set():
            try:
                assert routed.get("canary-00001").run_id == "canary-00001"
                answers += 1
            except BaseException as exc:
                failures.append(exc)

    reader = threading.Thread(target=read)
    reader.start()
    # Opened on the replica, not read yet: its first chunk will meet a dead replica.
    opened = routed.registry.get(OP_CANARY_REPORTS)(ReportQuery(), Call())
    try:
        deadline = time.monotonic() + 10
        while routed.reads("replica") < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert routed.reads("replica") >= 3  # the opened stream and the reader's lookups
        routed.replica.stop("immediate")
        assert [r.run_id for r, _ in opened] == ["canary-00002", "canary-00001", "canary-00000"]
        time.sleep(0.5)
        # Streams opened after the replica went away read from the primary too.
        assert routed.run_ids()[0] == ["canary-00002", "canary-00001", "canary-00000"]
        assert not routed.usable()
    finally:
        stop.set()
        reader.join()
        routed.replica.start()
        routed.replica.wait_caught_up()
    assert failures == []
    assert answers > 0
    assert routed.reads("primary") > 0
    # Back, it is used again once a probe has seen it.
    deadline = time.monotonic() + 10
    while not routed.usable() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert routed.usable()
    before = routed.reads("replica")
    routed.get("canary-00002")
    assert routed.reads("replica") == before + 1


def test_a_routed_read_on_a_terminated_replica_connection_succeeds(
    make_routed: Callable[[float], Routed], replicated_database: tuple[str, str]
) -> None:
    # The replica engine skips the pre-ping too: the routed unit of work's BEGIN finds the
    # connection the standby dropped, and the read goes again on a new one, still there.
    routed = make_routed(LOOSE_LAG_S)
    routed.add(canary_report(1))
    routed.replica.wait_caught_up()
    eventually(routed, usable=True)
    assert routed.get("canary-00001").run_id == "canary-00001"
    engine = routed.router.replicas[0].engine
    # the pooled connection the read used (read-only: a standby refuses read-write)
    with engine.connect().execution_options(postgresql_readonly=True) as conn:
        dead = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()
        conn.rollback()
    terminate(replicated_database[1], dead)
    assert routed.get("canary-00001").run_id == "canary-00001"
    # Every connection handed out is counted: the dropped one and its replacement.
    assert (routed.reads("replica"), routed.reads("primary")) == (3, 0)
    with engine.connect().execution_options(postgresql_readonly=True) as conn:
        assert conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one() != dead
        conn.rollback()
