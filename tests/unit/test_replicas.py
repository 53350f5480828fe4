"""Read replicas without a replica server: the staleness rule, the settings, the routing.

The routing runs the real handlers on two SQLite files, one standing in for the primary and
one for a replica (what each holds differs, so the answer shows which one was read).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import cast

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError
from sqlalchemy import Connection, Engine
from sqlalchemy.engine import make_url

from costsim_analytics.api.dashboard.app import Dashboard
from costsim_analytics.api.dashboard.httpserver import parse_head
from costsim_analytics.api.metrics import ServiceMetrics
from costsim_analytics.bootstrap import build_registry
from costsim_analytics.drivers import schema
from costsim_analytics.drivers.database import EngineOptions, make_engine
from costsim_analytics.drivers.replicas import ReplicaRouter, replica_name
from costsim_analytics.engines.errors import DatabaseUnavailable, NotFound
from costsim_analytics.engines.pagination import Cursor
from costsim_analytics.engines.provenance import WriteBatch
from costsim_analytics.engines.replicas import ReplicaState, pick, usable
from costsim_analytics.engines.reports import CanaryReport, GetReport, ReportQuery
from costsim_analytics.engines.retention import RetentionPolicy
from costsim_analytics.handlers.call import Call
from costsim_analytics.handlers.ports import UnitOfWork
from costsim_analytics.handlers.registry import (
    OP_CANARY_REPORT,
    OP_CANARY_REPORTS,
    OP_PROVENANCE_BATCH,
    OP_RETENTION,
    Handler,
    Operation,
    OperationRegistry,
)
from costsim_analytics.handlers.routing import READS, current_route, route_reads
from costsim_analytics.handlers.streams import ResultStream
from costsim_analytics.handlers.uow import SqlAlchemyUnitOfWorkFactory
from costsim_analytics.settings import Settings, split_read_urls
from tests.factories import canary_report, provenance_input

# --- the staleness rule ---------------------------------------------------------------------

lags = st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True))
states = st.builds(ReplicaState, st.booleans(), st.booleans(), lags)
max_lags = st.floats(min_value=1e-3, max_value=1e6)


@given(states, max_lags)
def test_usable_means_reachable_standby_with_known_lag_within_bound(
    state: ReplicaState, max_lag: float
) -> None:
    lag = state.lag_s
    expected = (
        state.reachable
        and state.in_recovery
        and lag is not None
        and math.isfinite(lag)  # NaN and infinities are no measurement
        and lag <= max_lag
    )
    assert usable(state, max_lag) is expected


@given(st.lists(states, max_size=8), max_lags, st.integers(min_value=0, max_value=10**6))
def test_pick_takes_every_usable_replica_in_turn_and_only_those(
    replicas: list[ReplicaState], max_lag: float, start: int
) -> None:
    good = {i for i, s in enumerate(replicas) if usable(s, max_lag)}
    chosen = [pick(replicas, max_lag, turn=start + k) for k in range(len(good) or 1)]
    if not good:
        assert chosen == [None]
    else:
        assert set(chosen) == good  # each usable replica once per round


def test_a_replica_that_is_not_a_standby_or_has_replayed_nothing_is_not_used() -> None:
    assert not usable(ReplicaState(reachable=True, in_recovery=False, lag_s=0.0), 5)
    assert not usable(ReplicaState(reachable=True, in_recovery=True, lag_s=None), 5)
    assert usable(ReplicaState(reachable=True, in_recovery=True, lag_s=5.0), 5)
    assert usable(ReplicaState(reachable=True, in_recovery=True, lag_s=-0.2), 5)  # clock skew


# --- settings -------------------------------------------------------------------------------


def test_read_urls_split_on_commas_and_keep_an_encoded_comma() -> None:
    urls = split_read_urls(
        " postgresql+psycopg://r@h1:5433/db ,, postgresql+psycopg://u:p%2Cw@h2/db,"
    )
    assert urls == ["postgresql+psycopg://r@h1:5433/db", "postgresql+psycopg://u:p%2Cw@h2/db"]
    assert make_url(urls[1]).password == "p,w"
    assert split_read_urls("  ") == []
    assert Settings(database_read_urls=" ").database_read_urls == ""
    assert Settings().replica_max_lag_s == 5.0


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("sqlite:///replica.db", "entry 1 is a sqlite URL"),
        ("postgresql+psycopg://h/db, not a url", "entry 2 is not a SQLAlchemy URL"),
        ("postgresql+psycopg://h:port/db", "entry 1 is not a SQLAlchemy URL"),
    ],
)
def test_bad_read_urls_are_refused_naming_the_setting(value: str, why: str) -> None:
    with pytest.raises(ValidationError) as info:
        Settings(database_url="postgresql+psycopg://p/db", database_read_urls=value)
    assert f"COSTSIM_DATABASE_READ_URLS: {why}" in str(info.value)


def test_replicas_need_a_postgresql_primary() -> None:
    with pytest.raises(ValidationError) as info:
        Settings(database_url="sqlite:///primary.db", database_read_urls="postgresql://r/db")
    assert "COSTSIM_DATABASE_READ_URLS needs a PostgreSQL COSTSIM_DATABASE_URL" in str(info.value)


@pytest.mark.parametrize("lag", ["0", "-1", "nan"])
def test_the_lag_bound_must_be_positive(lag: str) -> None:
    with pytest.raises(ValidationError):
        Settings(replica_max_lag_s=lag)


def test_replica_names_carry_no_credentials() -> None:
    assert replica_name("postgresql+psycopg://u:s3cret@db-r1:5433/costsim") == "db-r1:5433/costsim"
    assert replica_name("postgresql+psycopg://u@db-r2/costsim") == "db-r2:5432/costsim"


# --- routing, on two SQLite files -----------------------------------------------------------


class FileReplica:
    """A stand-in replica: connections on another database file, or refused when down."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.calls: list[bool] = []  # the ``replica`` flag of each connect

    def connect(self, primary: Engine, *, replica: bool = True) -> tuple[Connection, bool]:
        self.calls.append(replica)
        if replica:
            return self.engine.connect(), True
        return primary.connect(), False


def migrated(path: Path) -> Engine:
    url = f"sqlite:///{path}"
    schema.upgrade(url)
    return make_engine(url)


def add(engine: Engine, *reports: CanaryReport) -> None:
    with SqlAlchemyUnitOfWorkFactory(engine)() as uow:
        for report in reports:
            uow.reports.add(report)
        uow.commit()


@pytest.fixture
def two_files(tmp_path: Path) -> tuple[Engine, FileReplica, OperationRegistry]:
    primary, replica = migrated(tmp_path / "primary.db"), migrated(tmp_path / "replica.db")
    files = FileReplica(replica)
    settings = Settings(database_url=str(primary.url), artifacts_dir=tmp_path / "artifacts")
    return primary, files, build_registry(primary, settings, replicas=files)


def test_routed_reads_use_the_replica_and_fall_back_on_not_found(
    two_files: tuple[Engine, FileReplica, OperationRegistry],
) -> None:
    primary, files, registry = two_files
    add(primary, canary_report(1), canary_report(2))
    add(files.engine, canary_report(1))  # the replica has not replayed report 2 yet
    get = registry.get(OP_CANARY_REPORT)
    assert get(GetReport("canary-00001"), Call()).run_id == "canary-00001"
    assert files.calls == [True]
    assert get(GetReport("canary-00002"), Call()).run_id == "canary-00002"
    assert files.calls == [True, True, False]  # NOT_FOUND on the replica, then the primary
    with pytest.raises(NotFound):
        get(GetReport("canary-00003"), Call())
    stream = registry.get(OP_CANARY_REPORTS)(ReportQuery(), Call())
    assert [r.run_id for r, _ in stream] == ["canary-00001"]  # the replica's (stale) answer


def test_writes_and_unrouted_reads_never_ask_the_replicas(
    two_files: tuple[Engine, FileReplica, OperationRegistry],
) -> None:
    _primary, files, registry = two_files
    write = registry.get(OP_PROVENANCE_BATCH)
    batch = WriteBatch([provenance_input(1)], request_id="req-1")
    first = write(batch, Call())
    assert write(batch, Call()).ids == first.ids  # the replay reads its key on the primary
    registry.get(OP_RETENTION)(RetentionPolicy(provenance_days=1, dry_run=True), Call())
    assert files.calls == []


def test_the_routing_table_names_only_reads() -> None:
    assert "analytics.canary_report" in READS
    assert not {name for name in READS if any(w in name for w in ("batch", "run", "promote"))}


# --- the router without a reachable replica -------------------------------------------------


def test_an_unreachable_replica_is_skipped_and_shown_without_its_credentials(
    tmp_path: Path,
) -> None:
    metrics = ServiceMetrics()
    # Port 1 on loopback refuses connections at once.
    url = "postgresql+psycopg://ro_user7:s3cret@127.0.0.1:1/costsim"
    router = ReplicaRouter([url], EngineOptions(), 5.0, on_read=metrics.count_read)
    metrics.watch_replicas(router.statuses, [r.name for r in router.replicas])
    try:
        router.refresh()
        assert router.statuses()[0].usable is False
        assert router.readiness_lines() == [
            "replica 127.0.0.1:1/costsim: lag unknown, skipped: unreachable"
        ]
        primary = migrated(tmp_path / "primary.db")
        conn, on_replica = router.connect(primary)
        conn.close()
        assert on_replica is False
        text = metrics.exposition().decode()
        assert "s3cret" not in text and "ro_user7" not in text
        assert 'costsim_replica_usable{replica="127.0.0.1:1/costsim"} 0.0' in text
        assert 'costsim_replica_lag_seconds{replica="127.0.0.1:1/costsim"} NaN' in text
        assert 'costsim_database_reads_total{target="primary"} 1.0' in text
        assert 'costsim_database_reads_total{target="replica"} 0.0' in text
    finally:
        router.stop()


def test_readyz_lists_the_replicas_and_stays_ready_without_them() -> None:
    lines = ["replica r1:5432/db: lag unknown, skipped: unreachable"]
    with ThreadPoolExecutor(1) as pool:
        app = Dashboard(
            OperationRegistry(), pool, ServiceMetrics(), lambda: True, detail=lambda: lines
        )
        response = asyncio.run(app(parse_head(b"GET /readyz HTTP/1.1\r\n\r\n")))
    assert response.status == 200
    assert response.body.decode() == f"ready\n{lines[0]}\n"


# --- a stream whose replica fails ------------------------------------------------------------


class ExitCounter:
    """A unit of work that only counts how often it is ended."""

    def __init__(self) -> None:
        self.exits = 0

    def __exit__(self, *exc: object) -> None:
        self.exits += 1


def chunks(reports: list[CanaryReport], fail_after: int | None) -> Iterator[list[CanaryReport]]:
    for i, report in enumerate(reports):
        if i == fail_after:
            raise DatabaseUnavailable("database unavailable: OperationalError")
        yield [report]
    if fail_after == len(reports):
        raise DatabaseUnavailable("database unavailable: OperationalError")


def stream_over(uow: ExitCounter, reports: list[CanaryReport], fail_after: int | None) -> object:
    return ResultStream(
        cast("UnitOfWork", uow),
        chunks(reports, fail_after),
        kind="canary_reports",
        fingerprint="f",
        cursor_of=lambda r: Cursor(r.timestamp, r.id),
        limit=len(reports) + 1,  # not exhausted early: the chunks decide where it fails
    )


def routed_stream(fail_after: int) -> tuple[Handler[None, object], list[ExitCounter]]:
    """A routed stream operation whose replica stream fails before chunk ``fail_after``."""
    reports = [canary_report(i) for i in range(3)]
    uows: list[ExitCounter] = []

    def handler(_command: None, _call: Call, /) -> object:
        route = current_route()
        assert route is not None
        uows.append(ExitCounter())
        if route.replica_allowed:
            route.served_by_replica = True  # what a connection through a replica records
            return stream_over(uows[-1], reports, fail_after)
        return stream_over(uows[-1], reports, None)

    op: Operation[None, object] = Operation("test.stream")
    return route_reads(frozenset({op.name}))(op, handler), uows


def test_a_stream_whose_replica_fails_before_its_first_chunk_reopens_on_the_primary() -> None:
    handler, uows = routed_stream(fail_after=0)
    stream = cast("ResultStream[CanaryReport]", handler(None, Call()))
    assert [r.run_id for r, _ in stream] == ["canary-00000", "canary-00001", "canary-00002"]
    assert [u.exits for u in uows] == [1, 1]  # the replica's transaction ended, then the primary's


def test_a_stream_whose_replica_fails_later_ends_unavailable_without_repeating_items() -> None:
    handler, uows = routed_stream(fail_after=1)
    stream = cast("ResultStream[CanaryReport]", handler(None, Call()))
    first = stream.next_chunk()
    assert [r.run_id for r, _ in first] == ["canary-00000"]
    with pytest.raises(DatabaseUnavailable):
        stream.next_chunk()
    stream.close()
    assert [u.exits for u in uows] == [1]  # never reopened: the caller resumes with its token


def test_a_stream_closed_before_its_first_chunk_is_not_reopened() -> None:
    handler, uows = routed_stream(fail_after=0)
    stream = cast("ResultStream[CanaryReport]", handler(None, Call()))
    stream.close()
    stream.close()
    assert stream.next_chunk() == []
    assert [u.exits for u in uows] == [1]
