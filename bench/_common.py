"""Shared helpers of the benchmarks: a throw-away database, the server subprocess, statistics.

Every benchmark runs against its own freshly created PostgreSQL database (dropped at the end)
and a real ``costsim-analytics serve`` subprocess, so the client (the benchmark process) and
the server never share a process or a GIL.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
import psycopg
from psycopg import sql
from sqlalchemy.engine import make_url

DEFAULT_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
CLI = str(Path(sys.executable).with_name("costsim-analytics"))
READY = "costsim-analytics listening on "


def base_parser(description: str) -> argparse.ArgumentParser:
    """An argument parser with ``--database-url`` (an existing database to connect through)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--database-url",
        default=os.environ.get("COSTSIM_BENCH_DATABASE_URL", DEFAULT_URL),
        help="an existing PostgreSQL database; the bench creates and drops its own next to it "
        "(default: $COSTSIM_BENCH_DATABASE_URL or %(default)s)",
    )
    return parser


def libpq_url(url: str) -> str:
    """A SQLAlchemy URL as a plain libpq URL for psycopg."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@contextlib.contextmanager
def bench_database(base_url: str, name: str, *, keep: bool = False) -> Iterator[str]:
    """Create database ``name`` next to ``base_url``, migrate it, yield its URL, drop it.

    With ``keep`` the database stays afterwards (bench/scale.py --keep, then --reuse).
    """
    url = make_url(base_url).set(database=name).render_as_string(hide_password=False)
    ident = sql.Identifier(name)
    with psycopg.connect(libpq_url(base_url), autocommit=True) as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(ident))
        admin.execute(sql.SQL("CREATE DATABASE {}").format(ident))
    try:
        subprocess.run(
            [CLI, "migrate", "--database-url", url], check=True, stdout=subprocess.DEVNULL
        )
        yield url
    finally:
        if not keep:
            with psycopg.connect(libpq_url(base_url), autocommit=True) as admin:
                admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(ident))


@dataclass(frozen=True)
class Server:
    """A running server subprocess; ``tls_ca`` (PEM) when it serves TLS signed by that CA."""

    address: str
    pid: int
    tls_ca: bytes | None = None

    def channel(self) -> grpc.Channel:
        """A blocking channel to the server: plaintext, or TLS trusting ``tls_ca``."""
        if self.tls_ca is None:
            return grpc.insecure_channel(self.address)
        credentials = grpc.ssl_channel_credentials(root_certificates=self.tls_ca)
        return grpc.secure_channel(self.address, credentials)

    def aio_channel(self) -> grpc.aio.Channel:
        """A grpc.aio channel to the server: plaintext, or TLS trusting ``tls_ca``."""
        if self.tls_ca is None:
            return grpc.aio.insecure_channel(self.address)
        credentials = grpc.ssl_channel_credentials(root_certificates=self.tls_ca)
        return grpc.aio.secure_channel(self.address, credentials)

    def cpu_s(self) -> float:
        """CPU seconds (user + system, all threads) the server has used so far (Linux)."""
        try:
            fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return float("nan")
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def client_cpu_s() -> float:
    """CPU seconds this (client) process has used so far."""
    times = os.times()
    return times.user + times.system


@contextlib.contextmanager
def subprocess_server(
    argv: Sequence[str],
    timeout_s: float = 30.0,
    *,
    env: Mapping[str, str] | None = None,
    tls_ca: bytes | None = None,
) -> Iterator[Server]:
    """Start a server that prints ``READY + host:port`` when listening; yield it.

    ``env`` is added to the environment; ``tls_ca`` is handed to the yielded :class:`Server`
    for its channels (the server itself learns of its certificate through ``env``).
    """
    # Port 0 for the dashboard too: two benchmark servers must not fight over its default port.
    env = {
        **os.environ,
        "COSTSIM_LOG_LEVEL": "ERROR",
        "COSTSIM_HTTP_LISTEN": "127.0.0.1:0",
        **(env or {}),
    }
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout is not None
        lines: queue.Queue[str] = queue.Queue()
        # A thread, not select(): the stream's buffer may already hold the line we wait for.
        threading.Thread(target=lambda: [lines.put(x) for x in proc.stdout], daemon=True).start()
        deadline = time.monotonic() + timeout_s
        line = ""
        while not line.startswith(READY):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or proc.poll() is not None:
                raise RuntimeError(f"server {argv[:2]} did not start (exit {proc.poll()})")
            try:
                line = lines.get(timeout=remaining)
            except queue.Empty:
                continue
        yield Server(line[len(READY) :].strip(), proc.pid, tls_ca)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def service_server(
    url: str, *, env: Mapping[str, str] | None = None, tls_ca: bytes | None = None
) -> contextlib.AbstractContextManager[Server]:
    """``costsim-analytics serve`` on ``url``, on a free loopback port (see subprocess_server)."""
    argv = [CLI, "serve", "--database-url", url, "--listen", "127.0.0.1:0"]
    return subprocess_server(argv, env=env, tls_ca=tls_ca)


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of a non-empty sequence."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * p // 100))
    return ordered[int(rank) - 1]
