"""QueryCanaryReports streaming through the service against a bare grpc.aio stream.

What is measured: messages/s of one QueryCanaryReports call (page_size 10,000, no filters)
streaming ``--reports`` reports from PostgreSQL through a real ``costsim-analytics serve``
subprocess, and messages/s of a bare ``grpc.aio`` server (a second subprocess, started by this
script) whose QueryCanaryReports only yields the very same messages, prebuilt, with no
database: the transport's own limit. Their ratio is the result (target: at least 0.7). The
plain SQL fetch of the same rows (psycopg ``fetchall``) is printed for reference.

How: a fresh database is created and migrated, then dropped at the end; reports are seeded
through the unit of work and the canary report driver. The client (this process) reads raw
bytes without parsing them, as little work as a Python client can do. The first service stream is a
warm-up whose messages become the bare server's prebuilt ones; each variant then streams
``--repeats`` times, the two interleaved, and the median counts. CPU per message of each
server process and of the client is printed too: when the client uses more than the bare
server, the bare rate is the client's limit rather than the transport's.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import signal
import statistics
import struct
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import psycopg
from _common import (
    READY,
    Server,
    base_parser,
    bench_database,
    client_cpu_s,
    libpq_url,
    service_server,
    subprocess_server,
)

from costsim.analytics.v1 import analytics_pb2 as pb
from costsim.analytics.v1 import analytics_pb2_grpc as pb_grpc
from costsim_analytics.drivers.database import make_engine
from costsim_analytics.engines.reports import CanaryReport
from costsim_analytics.handlers.uow import SqlAlchemyUnitOfWorkFactory

METHOD = "/costsim.analytics.v1.AnalyticsService/QueryCanaryReports"
SQL = (
    "SELECT id, run_id, timestamp, status, total_samples, matching_samples, minor_drift_samples,"
    " major_drift_samples, median_cost_diff, p90_cost_diff, kl_divergence, outlier_count,"
    " passed, failure_reasons_json, artifact_paths_json, golden_comparison_json, created_at"
    " FROM costsim_canary_reports ORDER BY timestamp DESC, id DESC LIMIT %s"
)
REASONS = [
    "median cost difference 4.2% exceeds the 3% threshold",
    "KL divergence 0.31 exceeds the 0.2 threshold",
    "12 samples drifted by more than 25% (major drift)",
]


def make_report(rng: random.Random, n: int, start: datetime) -> CanaryReport:
    """A realistic report: mostly passes, some failures with reasons, a few errors."""
    status = rng.choices(["pass", "fail", "error", "skipped"], [70, 20, 7, 3])[0]
    total = rng.randint(50, 500)
    major = rng.randint(0, total // 10) if status == "fail" else 0
    minor = rng.randint(0, total // 5)
    run_id = f"canary-{start:%Y%m%d}-{n:06d}"
    return CanaryReport(
        run_id=run_id,
        timestamp=start + timedelta(seconds=n * 259 + rng.randint(0, 200)),
        status=status,
        total_samples=total,
        matching_samples=total - minor - major,
        minor_drift_samples=minor,
        major_drift_samples=major,
        median_cost_diff=None if status == "error" else round(rng.uniform(-0.05, 0.05), 4),
        p90_cost_diff=None if status == "error" else round(rng.uniform(0, 0.2), 4),
        kl_divergence=None if status == "error" else round(rng.uniform(0, 0.4), 4),
        outlier_count=rng.randint(0, 8),
        passed=status == "pass",
        failure_reasons=tuple(rng.sample(REASONS, rng.randint(1, 2))) if status == "fail" else (),
        artifact_paths=(f"artifacts/canary/{run_id}/report.json", f"artifacts/{run_id}/diff.csv"),
    )


def seed(url: str, count: int) -> None:
    rng = random.Random(7)
    start = datetime.now(UTC) - timedelta(days=30)
    engine = make_engine(url)
    factory = SqlAlchemyUnitOfWorkFactory(engine)
    try:
        for first in range(0, count, 1000):
            with factory() as uow:
                for n in range(first, min(first + 1000, count)):
                    uow.reports.add(make_report(rng, n, start))
                uow.commit()
    finally:
        engine.dispose()


class Meter:
    """Streams from one server; keeps the time of each and the CPU of server and client."""

    def __init__(self, server: Server, n: int) -> None:
        self.server, self.n = server, n
        self.channel = grpc.insecure_channel(server.address)
        self.call = self.channel.unary_stream(
            METHOD, request_serializer=pb.QueryCanaryReportsRequest.SerializeToString
        )
        self.seconds: list[float] = []
        self.server_cpu = self.client_cpu = 0.0

    def stream(self, timed: bool = True) -> list[bytes]:
        """One stream of ``n`` messages, read as raw bytes (the client parses nothing)."""
        server_cpu, client_cpu = self.server.cpu_s(), client_cpu_s()
        start = time.perf_counter()
        messages = list(self.call(pb.QueryCanaryReportsRequest(page_size=self.n), timeout=120))
        if timed:
            self.seconds.append(time.perf_counter() - start)
            self.server_cpu += self.server.cpu_s() - server_cpu
            self.client_cpu += client_cpu_s() - client_cpu
        if len(messages) != self.n:
            raise RuntimeError(f"{len(messages)} messages streamed, expected {self.n}")
        return messages

    def result(self) -> tuple[float, float, float]:
        """Median messages/s; server and client CPU µs per message."""
        per_message = 1e6 / (self.n * len(self.seconds))
        rate = self.n / statistics.median(self.seconds)
        return rate, self.server_cpu * per_message, self.client_cpu * per_message


def sql_fetch(url: str, count: int, repeats: int) -> list[float]:
    seconds = []
    with psycopg.connect(libpq_url(url)) as conn:
        for _ in range(repeats + 1):
            start = time.perf_counter()
            rows = conn.execute(SQL, (count,)).fetchall()
            seconds.append(time.perf_counter() - start)
            if len(rows) != count:
                raise RuntimeError(f"{len(rows)} rows fetched, expected {count}")
    return seconds[1:]


class BareServicer(pb_grpc.AnalyticsServiceServicer):
    """QueryCanaryReports from prebuilt messages; nothing else."""

    def __init__(self, messages: list[pb.QueryCanaryReportsResponse]) -> None:
        self._messages = messages

    async def QueryCanaryReports(self, request: Any, context: Any) -> Any:
        """Yield the prebuilt messages, at most page_size of them."""
        for message in self._messages[: request.page_size or 100]:
            yield message


async def serve_bare(path: Path) -> None:
    """The bare server process: load length-prefixed messages from ``path`` and serve them."""
    data, messages, offset = path.read_bytes(), [], 0
    while offset < len(data):
        (size,) = struct.unpack_from(">I", data, offset)
        messages.append(
            pb.QueryCanaryReportsResponse.FromString(data[offset + 4 : offset + 4 + size])
        )
        offset += 4 + size
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    pb_grpc.add_AnalyticsServiceServicer_to_server(BareServicer(messages), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    print(f"{READY}127.0.0.1:{port}", flush=True)
    await stop.wait()
    await server.stop(1)


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--serve-bare":
        asyncio.run(serve_bare(Path(sys.argv[2])))
        return
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--reports", type=int, default=10_000, help="reports seeded and streamed")
    parser.add_argument("--repeats", type=int, default=7, help="timed streams per variant")
    args = parser.parse_args()
    n = args.reports

    with (
        tempfile.TemporaryDirectory() as tmp,
        bench_database(args.database_url, "costsim_bench_reports") as url,
    ):
        start = time.perf_counter()
        seed(url, n)
        print(f"seeded {n} reports in {time.perf_counter() - start:.1f} s")
        with contextlib.ExitStack() as stack:
            service = Meter(stack.enter_context(service_server(url)), n)
            stack.callback(service.channel.close)
            prebuilt = service.stream(timed=False)  # warm-up; the bare server streams these
            path = Path(tmp, "messages.bin")
            path.write_bytes(b"".join(struct.pack(">I", len(m)) + m for m in prebuilt))
            bare_argv = [sys.executable, __file__, "--serve-bare", str(path)]
            bare = Meter(stack.enter_context(subprocess_server(bare_argv)), n)
            stack.callback(bare.channel.close)
            bare.stream(timed=False)
            for _ in range(args.repeats):  # interleaved, so that drifts hit both alike
                service.stream()
                bare.stream()
        service_rate, service_cpu, _ = service.result()
        bare_rate, bare_cpu, bare_client = bare.result()
        sql_ms = statistics.median(sql_fetch(url, n, args.repeats)) * 1000

    ratio, cpu_ratio = service_rate / bare_rate, bare_cpu / service_cpu
    size = sum(map(len, prebuilt)) / n
    print(f"{n} messages of ~{size:.0f} bytes per stream, median of {args.repeats} streams")
    for name, meter in (("service (PostgreSQL)", service), ("bare grpc.aio stream", bare)):
        rate, cpu, client = meter.result()
        low, high = min(meter.seconds) * 1000, max(meter.seconds) * 1000
        print(f"{name}: {rate:>7,.0f} msg/s (streams {low:.0f}-{high:.0f} ms)")
        print(f"    CPU per message: server process {cpu:.0f} µs, client {client:.0f} µs")
    print(f"ratio service/bare: {ratio:.2f} (target 0.7)")
    print(f"ratio of server CPU per message, bare/service: {cpu_ratio:.2f}")
    if bare_client > bare_cpu:
        print("note: the client uses more CPU than the bare server, so it limits the bare rate")
    print(f"plain SQL fetch of the same {n} rows (psycopg, reference): {sql_ms:.1f} ms")
    result = {
        "bench": "reports",
        "ratio": round(ratio, 3),
        "target": 0.7,
        "service_msgs_s": round(service_rate),
        "bare_msgs_s": round(bare_rate),
        "sql_fetch_ms": round(sql_ms, 1),
        "cpu_ratio": round(cpu_ratio, 3),
        "service_server_cpu_us_per_msg": round(service_cpu, 1),
        "bare_server_cpu_us_per_msg": round(bare_cpu, 1),
        "client_cpu_us_per_msg": round(bare_client, 1),
        "messages": n,
        "message_bytes": round(size),
        "repeats": args.repeats,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
