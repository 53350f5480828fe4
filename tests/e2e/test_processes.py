"""``serve --processes 2`` on PostgreSQL: two server processes on one port, supervised.

The real command line starts a parent and its two children; the tests look at them from the
outside: the process tree (``/proc``), the TCP connections each child holds, and ``/metrics``.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import json_format
from grpc_health.v1 import health_pb2

from costsim.analytics.v1 import analytics_pb2 as pb
from costsim_analytics.api.supervisor import RestartPolicy, Supervisor
from costsim_analytics.drivers.database import make_engine
from tests.conftest import truncate_all
from tests.e2e.server import CLI, ServerProcess
from tests.factories import provenance_json

SERVING = health_pb2.HealthCheckResponse.SERVING
REPO = Path(__file__).resolve().parents[2]
ROWS_PER_BATCH = 3
CONNECTIONS = 16


@pytest.fixture
def pg_url(postgres_migrated_url: str) -> str:
    engine = make_engine(postgres_migrated_url)
    truncate_all(engine)
    engine.dispose()
    return postgres_migrated_url


@pytest.fixture
def server(pg_url: str, tmp_path: Path) -> Iterator[ServerProcess]:
    """``serve --processes 2`` (COSTSIM_PROCESSES) with its temporary files under ``tmp_path``."""
    temp = tmp_path / "temp"
    temp.mkdir()
    proc = ServerProcess(
        pg_url,
        tmp_path / "server.log",
        COSTSIM_PROCESSES="2",
        COSTSIM_ARTIFACTS_DIR=str(tmp_path / "artifacts"),
        TMPDIR=str(temp),
    ).start()
    try:
        proc.wait_health(SERVING)
        yield proc
    finally:
        proc.stop()


def children(pid: int) -> set[int]:
    """The live processes whose parent is ``pid`` (zombies not counted)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            state, ppid = (entry / "stat").read_text().rsplit(")", 1)[1].split()[:2]
        except OSError:
            continue
        if int(ppid) == pid and state != "Z":
            found.add(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def metrics(server: ServerProcess) -> str:
    with urllib.request.urlopen(f"{server.http_url}/metrics", timeout=10) as response:
        text: str = response.read().decode()
        return text


def metric_pids(text: str) -> set[int]:
    return {int(p) for p in re.findall(r'costsim_worker_start_time_seconds\{pid="(\d+)"\}', text)}


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample of the exposition (0 when absent)."""
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        head, _, value = line.rpartition(" ")
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            return float(value)
    return 0.0


def established(pid: int, port: int) -> int:
    """TCP connections to ``port`` that process ``pid`` holds open (Linux /proc)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "01" and int(local.rsplit(":", 1)[1], 16) == port and inode in inodes:
                count += 1
    return count


def write(stub: object, i: int) -> None:
    request = pb.WriteProvenanceBatchRequest(request_id=f"proc-{i}")
    for n in range(ROWS_PER_BATCH):
        json_format.ParseDict(provenance_json(i * 10 + n), request.records.add())
    response = stub.WriteProvenanceBatch(request, timeout=20)  # type: ignore[attr-defined]
    assert len(response.ids) == ROWS_PER_BATCH


def own_connection(server: ServerProcess) -> grpc.Channel:
    """A channel with a connection of its own (channels share them by default)."""
    return grpc.insecure_channel(server.address, options=[("grpc.use_local_subchannel_pool", 1)])


def retrying_channel(server: ServerProcess) -> grpc.Channel:
    """A new connection with the deploy/ service config's retries (UNAVAILABLE)."""
    config = (REPO / "deploy" / "grpc-service-config.json").read_text()
    options = [
        ("grpc.service_config", config),
        ("grpc.enable_retries", 1),
        ("grpc.use_local_subchannel_pool", 1),
    ]
    return grpc.insecure_channel(server.address, options=options)


def wait_for(check: object, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_two_processes_serve_share_one_port_and_sum_their_metrics(server: ServerProcess) -> None:
    assert server.proc is not None
    workers = children(server.proc.pid)
    assert len(workers) == 2
    assert metric_pids(metrics(server)) == workers
    port = int(server.address.rsplit(":", 1)[1])
    channels = [own_connection(server) for _ in range(CONNECTIONS)]
    try:
        for i, channel in enumerate(channels):
            write(server.stub(channel), i)
        # Each connection is held by one child, and every call on it succeeded: both served.
        held = {pid: established(pid, port) for pid in workers}
        assert sum(held.values()) >= CONNECTIONS
        assert all(count > 0 for count in held.values()), held
    finally:
        for channel in channels:
            channel.close()
    # Whichever child answers /metrics, it reports the calls and rows of both.
    for _ in range(4):
        text = metrics(server)
        handled = sample(
            text,
            "grpc_server_handled_total",
            grpc_method="WriteProvenanceBatch",
            grpc_code="OK",
        )
        assert handled == CONNECTIONS
        assert sample(text, "costsim_provenance_rows_written_total") == CONNECTIONS * ROWS_PER_BATCH
        assert sample(text, "costsim_serving") == 1
    assert "Traceback" not in server.log()


def test_a_killed_process_is_restarted_and_calls_keep_succeeding(server: ServerProcess) -> None:
    assert server.proc is not None
    parent = server.proc.pid
    before = children(parent)
    with server.channel() as channel:
        write(server.stub(channel), 0)
    victim = min(before)
    os.kill(victim, signal.SIGKILL)
    # New connections go to the survivor at once; the retries cover a connection refused
    # by the dying one.
    for i in range(1, 21):
        with retrying_channel(server) as channel:
            write(server.stub(channel), i)
    wait_for(lambda: len(children(parent)) == 2 and victim not in children(parent))
    after = children(parent)
    assert len(after - before) == 1
    wait_for(lambda: metric_pids(metrics(server)) == after)
    # The dead process's counts stay in the sum; its live gauges are gone.
    server.wait_health(SERVING)
    for i in range(21, 21 + CONNECTIONS):
        with own_connection(server) as channel:
            write(server.stub(channel), i)
    total = sample(metrics(server), "costsim_provenance_rows_written_total")
    assert total == (21 + CONNECTIONS) * ROWS_PER_BATCH
    log = server.log()
    assert f"server process {victim} (slot" in log and "signal SIGKILL" in log


def test_sighup_reaches_every_process_and_sigterm_drains_them(
    server: ServerProcess, tmp_path: Path
) -> None:
    assert server.proc is not None
    workers = children(server.proc.pid)
    assert len(workers) == 2
    server.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: server.log().count("SIGHUP: reloading the policy") == 2)
    assert children(server.proc.pid) == workers  # reloaded, not restarted
    server.wait_health(SERVING)
    metrics_dirs = list((tmp_path / "temp").glob("costsim-metrics-*"))
    assert len(metrics_dirs) == 1 and any(metrics_dirs[0].iterdir())
    assert server.stop(signal.SIGTERM) == 0
    assert not any(alive(pid) for pid in workers)
    assert not metrics_dirs[0].exists()
    log = server.log()
    assert log.count("api.server: stopped") == 2
    assert "SIGTERM: stopping the server processes" in log


def test_the_processes_die_with_a_killed_parent(server: ServerProcess) -> None:
    assert server.proc is not None
    workers = children(server.proc.pid)
    server.proc.kill()
    server.proc.wait()
    wait_for(lambda: not any(alive(pid) for pid in workers))


def crashing(code: int) -> Supervisor:
    """A supervisor of children that exit with ``code`` at once, with short restart delays."""
    return Supervisor(
        2,
        listen="127.0.0.1:0",
        http_listen="",
        env=dict(os.environ),
        drain_timeout_s=5,
        policy=RestartPolicy(initial_delay_s=0.02, max_delay_s=0.05),
        command=[sys.executable, "-c", f"raise SystemExit({code})"],
    )


def test_a_crash_loop_ends_the_parent(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, "costsim_analytics.api.supervisor"):
        assert crashing(1).run() == 1
    text = caplog.text
    assert "a crash loop, stopping" in text
    assert text.count("restarting in") >= 4  # the slot that gave up was restarted 4 times
    assert "processes listening on" not in text


def test_a_process_refusing_to_start_ends_the_parent(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, "costsim_analytics.api.supervisor"):
        assert crashing(2).run() == 2
    assert "refused to start (status 2): stopping" in caplog.text
    assert "restarting in" not in caplog.text


def run_serve(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CLI, "serve", *args],
        env={**os.environ, "COSTSIM_HTTP_LISTEN": "off", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_sqlite_refuses_more_than_one_process(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'costsim.db'}"
    done = run_serve("--database-url", url, "--listen", "127.0.0.1:0", "--processes", "2")
    assert done.returncode == 2
    message = " ".join(done.stderr.split())
    assert "COSTSIM_PROCESSES=2 needs PostgreSQL" in message
    assert "one writer" in message
    assert "listening on" not in done.stdout


@pytest.mark.parametrize("value", ["0", "65", "two", "1.5"])
def test_an_invalid_processes_setting_is_refused_by_name(value: str, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'costsim.db'}"
    done = run_serve("--database-url", url, COSTSIM_PROCESSES=value)
    assert done.returncode == 2
    assert "COSTSIM_PROCESSES" in done.stderr
    assert "listening on" not in done.stdout
