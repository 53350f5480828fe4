"""Start the real ``costsim-analytics serve`` process and talk to it over loopback."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from costsim.analytics.v1 import analytics_pb2_grpc as pb_grpc

CLI = str(Path(sys.executable).parent / "costsim-analytics")
SERVICE = "costsim.analytics.v1.AnalyticsService"


class ServerProcess:
    """One server subprocess on a free port; its log is kept for assertions."""

    def __init__(self, database_url: str, log_path: Path, **env: str) -> None:
        self.database_url = database_url
        self.log_path = log_path
        self.cwd: Path | None = None  # the process's working directory (None: this one's)
        # Set when the gRPC port serves TLS: channel() (and so the health checks) use them.
        self.credentials: grpc.ChannelCredentials | None = None
        # The HTTP side port on a free port too (its default, 8080, may be taken).
        self.env = {
            **os.environ,
            "COSTSIM_HEALTH_INTERVAL_S": "0.2",
            "COSTSIM_HTTP_LISTEN": "127.0.0.1:0",
            **env,
        }
        self.proc: subprocess.Popen[str] | None = None
        self.address = ""
        self.http_url = ""  # http(s)://host:port of the dashboard, when it is on
        self._lines: list[str] = []

    def start(self, timeout_s: float = 30.0, listen: str = "127.0.0.1:0") -> ServerProcess:
        self._log_file = self.log_path.open("a")
        self.proc = subprocess.Popen(
            [CLI, "serve", "--database-url", self.database_url, "--listen", listen],
            stdout=subprocess.PIPE,
            stderr=self._log_file,
            text=True,
            env=self.env,
            cwd=self.cwd,
        )
        ready = threading.Event()

        def read() -> None:
            assert self.proc is not None and self.proc.stdout is not None
            for line in self.proc.stdout:
                self._lines.append(line)
                if "dashboard on http://" in line or "dashboard on https://" in line:
                    self.http_url = line.rsplit(" ", 1)[-1].strip()
                if "listening on" in line:
                    self.address = line.rsplit(" ", 1)[-1].strip()
                    ready.set()

        threading.Thread(target=read, daemon=True).start()
        deadline = time.monotonic() + timeout_s
        while not ready.wait(0.1):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"server did not start:\n{self.log()}")
        return self

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def channel(self, credentials: grpc.ChannelCredentials | None = None) -> grpc.Channel:
        credentials = credentials or self.credentials
        if credentials is None:
            return grpc.insecure_channel(self.address)
        # Each channel its own subchannel: a new handshake, so a rotated certificate is seen.
        options = [("grpc.use_local_subchannel_pool", 1)]
        return grpc.secure_channel(self.address, credentials, options=options)

    def stub(self, channel: grpc.Channel) -> pb_grpc.AnalyticsServiceStub:
        return pb_grpc.AnalyticsServiceStub(channel)

    def health(self, service: str = SERVICE) -> int:
        with self.channel() as ch:
            response = health_pb2_grpc.HealthStub(ch).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=5
            )
            return response.status

    def wait_health(self, status: int, timeout_s: float = 20.0) -> None:
        deadline = time.monotonic() + timeout_s
        last: object = None
        while time.monotonic() < deadline:
            try:
                last = self.health()
            except grpc.RpcError as exc:  # NOT_FOUND before the first status is set
                last = exc.code()
            if last == status:
                return
            time.sleep(0.1)
        raise AssertionError(f"health stayed {last}, wanted {status}\n{self.log()}")

    @contextmanager
    def serving(self) -> Iterator[ServerProcess]:
        """Start the server, wait until it is SERVING, and stop it when the block ends."""
        self.start()
        try:
            self.wait_health(health_pb2.HealthCheckResponse.SERVING)
            yield self
        finally:
            self.stop()

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 20.0) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._log_file.close()
        return self.proc.returncode
