"""Shared fixtures: real databases (SQLite files and fresh PostgreSQL databases).

PostgreSQL comes from COSTSIM_TEST_POSTGRES_URL (default: the local server, database ``test``).
Each test session creates its own databases next to it and drops them afterwards. When the
server is unreachable the PostgreSQL tests are skipped locally, and fail under CI=true.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import Connection, Engine, text
from sqlalchemy.engine import make_url

from costsim_analytics.drivers import schema
from costsim_analytics.drivers.database import make_engine
from costsim_analytics.drivers.models import Base
from tests.replica import StreamingReplica
from tests.s3 import MotoServer, aws_env, isolate_aws_environment

ADMIN_URL = os.environ.get(
    "COSTSIM_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
BACKENDS = ["sqlite", "postgresql"]


def pytest_configure(config: pytest.Config) -> None:
    """No test may read the developer's AWS files or reach an AWS endpoint."""
    isolate_aws_environment()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test with its tier, from its folder."""
    for item in items:
        for tier in ("unit", "integration", "e2e"):
            if f"{os.sep}{tier}{os.sep}" in str(item.path):
                item.add_marker(getattr(pytest.mark, tier))


class PostgresServer:
    """Creates and drops throwaway databases on the test PostgreSQL server."""

    def __init__(self, admin_url: str) -> None:
        self.admin_url = make_url(admin_url)
        self._created: list[str] = []

    def _admin(self) -> psycopg.Connection[tuple[object, ...]]:
        u = self.admin_url
        return psycopg.connect(
            host=u.host,
            port=u.port or 5432,
            user=u.username,
            password=u.password or None,
            dbname=u.database,
            autocommit=True,
            connect_timeout=5,
        )

    def create_database(self) -> str:
        """A new empty database; returns its SQLAlchemy URL."""
        name = f"costsim_test_{uuid.uuid4().hex[:12]}"
        with self._admin() as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        self._created.append(name)
        return self.admin_url.set(database=name).render_as_string(hide_password=False)

    def drop_all(self) -> None:
        """Drop every database this session created."""
        with self._admin() as conn:
            for name in self._created:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """The test PostgreSQL server (skip locally / fail in CI when unreachable)."""
    server = PostgresServer(ADMIN_URL)
    try:
        server._admin().close()
    except psycopg.OperationalError as exc:
        message = f"PostgreSQL unreachable at {ADMIN_URL}: {exc}"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    yield server
    server.drop_all()


@pytest.fixture(scope="session")
def postgres_migrated_url(postgres: PostgresServer) -> str:
    """One migrated PostgreSQL database for the session (tables are emptied per test)."""
    url = postgres.create_database()
    schema.upgrade(url)
    return url


def truncate_all(engine: Engine) -> None:
    """Empty every table (and restart PostgreSQL id sequences)."""
    names = [table.name for table in Base.metadata.sorted_tables]
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text(f"TRUNCATE {', '.join(names)} RESTART IDENTITY"))
        else:
            for name in names:
                conn.execute(text(f"DELETE FROM {name}"))


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A migrated, empty database on each backend."""
    if request.param == "sqlite":
        sqlite_url = f"sqlite:///{tmp_path / 'costsim.db'}"
        schema.upgrade(sqlite_url)
        return sqlite_url
    url: str = request.getfixturevalue("postgres_migrated_url")
    engine = make_engine(url)
    truncate_all(engine)
    engine.dispose()
    return url


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    """An engine on :func:`database_url`."""
    eng = make_engine(database_url)
    yield eng
    eng.dispose()


@pytest.fixture
def tx(engine: Engine) -> Iterator[Connection]:
    """A connection inside an outer transaction rolled back after the test.

    For tests of code that never commits (the drivers): what they write is gone afterwards,
    and the test sees the same transaction the driver wrote in.
    """
    with engine.connect() as conn:
        outer = conn.begin()
        try:
            yield conn
        finally:
            outer.rollback()


@pytest.fixture(params=BACKENDS)
def empty_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A database with no schema at all, on each backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'empty.db'}"
    server: PostgresServer = request.getfixturevalue("postgres")
    return server.create_database()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    """A local S3-compatible server (moto) for the session; the AWS variables point at it.

    Skipped locally and failed under CI=true when it cannot start.
    """
    server = MotoServer(tmp_path_factory.mktemp("moto") / "moto.log")
    try:
        server.start()
    except (RuntimeError, OSError) as exc:
        message = f"moto server could not start: {exc}"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    with pytest.MonkeyPatch.context() as patch:
        for name, value in aws_env(server.endpoint).items():
            patch.setenv(name, value)
        yield server
    server.stop()


@pytest.fixture(scope="session")
def replica_database(postgres: PostgresServer) -> str:
    """A migrated database of the replica tests' own, made before the replica is copied."""
    url = postgres.create_database()
    schema.upgrade(url)
    return url


@pytest.fixture(scope="session")
def replica(postgres: PostgresServer, replica_database: str) -> Iterator[StreamingReplica]:
    """A streaming replica of the test PostgreSQL server for the session (tests/replica.py).

    It is copied after :func:`replica_database` exists, so it starts with that database.
    Skipped locally and failed under CI=true when it cannot be made.
    """
    standby = StreamingReplica(ADMIN_URL)
    try:
        standby.create()
    except (RuntimeError, OSError, subprocess.TimeoutExpired, psycopg.Error) as exc:
        standby.destroy()
        message = f"no streaming replica of {ADMIN_URL}: {exc}"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    try:
        yield standby
    finally:
        standby.destroy()


@pytest.fixture(scope="session")
def replicated_database(replica_database: str, replica: StreamingReplica) -> tuple[str, str]:
    """The replica tests' database: its URL on the primary and on the replica."""
    database = make_url(replica_database).database
    assert database is not None
    replica.wait_ready(database)
    return replica_database, replica.url(database)
