"""The server process after PostgreSQL dropped every connection of its pools.

Its engines skip the pool's pre-ping (one round trip less per call); the first round trip of
each unit of work finds a dropped connection and goes again on a new one. Unary calls and
streams (the stream pool) both succeed at once, with and without a deadline.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from google.protobuf import json_format
from sqlalchemy.engine import make_url

from costsim.analytics.v1 import analytics_pb2 as pb
from costsim_analytics.drivers.database import make_engine
from costsim_analytics.handlers.uow import SqlAlchemyUnitOfWorkFactory
from tests.conftest import truncate_all
from tests.e2e.server import ServerProcess
from tests.factories import canary_report, provenance_json
from tests.integration.test_stale_connections import admin, terminate


@pytest.fixture
def pg_server(postgres_migrated_url: str, tmp_path: Path) -> Iterator[ServerProcess]:
    engine = make_engine(postgres_migrated_url)
    truncate_all(engine)
    with SqlAlchemyUnitOfWorkFactory(engine)() as uow:
        for i in range(3):
            uow.reports.add(canary_report(i))
        uow.commit()
    engine.dispose()
    with ServerProcess(
        postgres_migrated_url, tmp_path / "server.log", COSTSIM_ARTIFACTS_DIR=str(tmp_path / "a")
    ).serving() as proc:
        yield proc


def server_backends(url: str) -> list[int]:
    """Every backend on ``url``'s database but the one asking (the server's, in this test)."""
    with admin(url) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity"
            " WHERE datname = %s AND pid <> pg_backend_pid() AND backend_type = 'client backend'",
            (make_url(url).database,),
        ).fetchall()
    return [int(pid) for (pid,) in rows]  # type: ignore[call-overload]


@pytest.mark.parametrize("timeout", [10.0, None], ids=["deadline", "no-deadline"])
def test_calls_succeed_after_the_database_dropped_the_servers_connections(
    pg_server: ServerProcess, postgres_migrated_url: str, timeout: float | None
) -> None:
    request = pb.WriteProvenanceBatchRequest()
    json_format.ParseDict(provenance_json(0), request.records.add())
    with pg_server.channel() as channel:
        stub = pg_server.stub(channel)

        def calls(n: int) -> list[str]:
            reports = [
                m.report.run_id
                for m in stub.QueryCanaryReports(pb.QueryCanaryReportsRequest(), timeout=timeout)
            ]
            ids = stub.WriteProvenanceBatch(request, timeout=timeout).ids
            stored = list(stub.QueryProvenance(pb.QueryProvenanceRequest(), timeout=timeout))
            assert len(ids) == 1 and len(stored) == n
            return reports

        before = calls(1)
        dropped = server_backends(postgres_migrated_url)
        assert len(dropped) >= 2  # the main pool's and the stream pool's connections at least
        terminate(postgres_migrated_url, *dropped)
        started = time.monotonic()
        after = calls(2)
        assert time.monotonic() - started < 5
    assert before == after == ["canary-00002", "canary-00001", "canary-00000"]
    assert not set(dropped) & set(server_backends(postgres_migrated_url))
