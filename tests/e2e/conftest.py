from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from tests.e2e.server import ServerProcess


@pytest.fixture
def server(database_url: str, tmp_path: Path) -> Iterator[ServerProcess]:
    """A serving server on a migrated, empty database (each backend)."""
    with ServerProcess(
        database_url,
        tmp_path / "server.log",
        COSTSIM_MAX_BATCH="50",
        # Canary artifacts beside the test's other files, not under the working directory.
        COSTSIM_ARTIFACTS_DIR=str(tmp_path / "artifacts"),
    ).serving() as proc:
        yield proc


@pytest.fixture
def channel(server: ServerProcess) -> Iterator[grpc.Channel]:
    with server.channel() as ch:
        yield ch


@pytest.fixture
def stub(server: ServerProcess, channel: grpc.Channel):
    return server.stub(channel)
