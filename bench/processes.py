"""Throughput of ``serve --processes 1`` against ``--processes 2``, in the same run.

Both servers run at once (real ``costsim-analytics serve`` subprocesses over PostgreSQL, each
on a database of its own) and the benchmark alternates short rounds between them, who goes
first swapped each round, so that the machine's other load falls on both alike; each round
gives one paired ratio, and the JSON reports their median and range. What is measured:

* ingest: provenance rows/s of WriteProvenanceBatch requests (payload as ``payload_json``,
  each with its request id), ``--in-flight`` at a time over as many connections of their own;
* query: pages/s of QueryProvenance streams of ``--page-size`` messages over the rows just
  written, ``--in-flight`` at a time the same way.

Requests are serialised before the clock starts and responses are not decoded, so the client
(this process, one asyncio loop) spends as little of the machine as it can; it still shares
the machine's cores with the server processes and PostgreSQL. With SO_REUSEPORT the kernel
spreads the connections over the processes. The JSON last line has the raw rates and
``ingest_ratio_2_over_1`` and ``query_ratio_2_over_1``, and for each phase how many cores
were busy on average: the server processes, their PostgreSQL backends, this client, and the
rest of the machine (anything else running), which says what the cores allowed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import statistics
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import psycopg
from _common import base_parser, bench_database, client_cpu_s, libpq_url, service_server
from ingest import make_record, request_bytes
from sqlalchemy.engine import make_url

from costsim.analytics.v1 import analytics_pb2 as pb

SERVICE = "/costsim.analytics.v1.AnalyticsService/"
OPTIONS = [("grpc.use_local_subchannel_pool", 1)]


def identity(body: bytes) -> bytes:
    return body


Send = Callable[[grpc.aio.Channel, int], Awaitable[None]]


async def run_phase(address: str, in_flight: int, send: Send, count: int) -> float:
    """``count`` calls of ``send(channel, n)``, ``in_flight`` at a time; returns the seconds."""
    channels = [grpc.aio.insecure_channel(address, options=OPTIONS) for _ in range(in_flight)]
    try:
        for channel in channels:
            await channel.channel_ready()
        queue = list(range(count - 1, -1, -1))

        async def worker(channel: grpc.aio.Channel) -> None:
            while queue:
                await send(channel, queue.pop())

        start = time.perf_counter()
        await asyncio.gather(*(worker(channel) for channel in channels))
        return time.perf_counter() - start
    finally:
        for channel in channels:
            await channel.close()


def _cpu_s(fields: list[str]) -> float:
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_by_pid(server_pid: int, database: str) -> tuple[dict[int, float], dict[int, float]]:
    """CPU seconds so far, by pid, of the server's processes and of its database's backends.

    The server's: the parent and its children. The backends: PostgreSQL's processes serving
    ``database`` (their process title names it).
    """
    server: dict[int, float] = {}
    backends: dict[int, float] = {}
    marker = f" {database} ".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            pid = int(entry.name)
            if pid == server_pid or int(fields[1]) == server_pid:
                server[pid] = _cpu_s(fields)
            elif marker in (entry / "cmdline").read_bytes():
                backends[pid] = _cpu_s(fields)
        except OSError:
            continue
    return server, backends


def used(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds used between two snapshots (a process started since counts from 0)."""
    return sum(cpu - before.get(pid, 0.0) for pid, cpu in after.items())


def machine_busy_s() -> float:
    """CPU seconds all cores spent on anything but idle and iowait so far (Linux)."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]
    return (sum(values[:8]) - idle) / os.sysconf("SC_CLK_TCK")


@dataclass
class Usage:
    """CPU seconds used over a phase: server, database backends, client, the whole machine."""

    server: float = 0.0
    database: float = 0.0
    client: float = 0.0
    machine: float = 0.0
    seconds: float = 0.0

    def share(self) -> dict[str, float]:
        """Cores busy on average: server, database, client, and the rest (other work)."""
        s = self.seconds
        rest = self.machine - self.server - self.database - self.client
        return {
            "server_cores": round(self.server / s, 2),
            "database_cores": round(self.database / s, 2),
            "client_cores": round(self.client / s, 2),
            "other_cores": round(rest / s, 2),
        }


class Meter:
    """Measures the CPU of one phase (``with meter.phase(usage):``)."""

    def __init__(self, server_pid: int, database: str) -> None:
        self.server_pid = server_pid
        self.database = database

    @contextlib.contextmanager
    def phase(self, usage: Usage) -> Iterator[None]:
        """Fill ``usage`` with what the block used."""
        server, backends = cpu_by_pid(self.server_pid, self.database)
        marks = (client_cpu_s(), machine_busy_s(), time.perf_counter())
        yield
        server_after, backends_after = cpu_by_pid(self.server_pid, self.database)
        usage.server = used(server, server_after)
        usage.database = used(backends, backends_after)
        usage.client = client_cpu_s() - marks[0]
        usage.machine = machine_busy_s() - marks[1]
        usage.seconds = time.perf_counter() - marks[2]


@dataclass
class Target:
    """One server under test: its process count, address, requests and measurements."""

    processes: int
    address: str
    meter: Meter
    bodies: list[bytes]
    sent: int = 0
    ingest: list[float] = field(default_factory=list)
    query: list[float] = field(default_factory=list)
    ingest_usage: list[Usage] = field(default_factory=list)
    query_usage: list[Usage] = field(default_factory=list)


def summed(usages: list[Usage]) -> Usage:
    """The usage of several phases together."""
    return Usage(
        server=sum(u.server for u in usages),
        database=sum(u.database for u in usages),
        client=sum(u.client for u in usages),
        machine=sum(u.machine for u in usages),
        seconds=sum(u.seconds for u in usages),
    )


async def ingest_round(target: Target, batches: int, args: argparse.Namespace) -> float:
    """Send the target's next ``batches`` requests; rows/s."""
    first = target.sent
    target.sent += batches

    async def write(channel: grpc.aio.Channel, n: int) -> None:
        call = channel.unary_unary(
            SERVICE + "WriteProvenanceBatch",
            request_serializer=identity,
            response_deserializer=identity,
        )
        await call(target.bodies[first + n], timeout=120)

    usage = Usage()
    with target.meter.phase(usage):
        seconds = await run_phase(target.address, args.in_flight, write, batches)
    target.ingest_usage.append(usage)
    return batches * args.batch_size / seconds


async def query_round(target: Target, pages: int, args: argparse.Namespace) -> float:
    """Read ``pages`` QueryProvenance pages of ``--page-size`` messages; pages/s."""
    query = pb.QueryProvenanceRequest(page_size=args.page_size).SerializeToString()

    async def read(channel: grpc.aio.Channel, _n: int) -> None:
        call = channel.unary_stream(
            SERVICE + "QueryProvenance",
            request_serializer=identity,
            response_deserializer=identity,
        )
        got = 0
        async for _ in call(query, timeout=120):
            got += 1
        if got != args.page_size:
            raise RuntimeError(f"a page of {got} messages, expected {args.page_size}")

    usage = Usage()
    with target.meter.phase(usage):
        seconds = await run_phase(target.address, args.in_flight, read, pages)
    target.query_usage.append(usage)
    return pages / seconds


async def run_rounds(targets: list[Target], args: argparse.Namespace) -> None:
    """Warm both up, then alternate rounds between them: ingest first, then queries.

    Alternating (and swapping who goes first each round) spreads the machine's other load
    over both servers alike; each round gives one paired ratio.
    """
    for target in targets:
        await ingest_round(target, args.warmup, args)
    for target in targets:
        target.ingest_usage.clear()
    per_round = args.batches // args.rounds
    for r in range(args.rounds):
        for target in targets if r % 2 == 0 else targets[::-1]:
            target.ingest.append(await ingest_round(target, per_round, args))
    for target in targets:
        await query_round(target, args.warmup * 4, args)
        target.query_usage.clear()
    for r in range(args.rounds):
        for target in targets if r % 2 == 0 else targets[::-1]:
            target.query.append(await query_round(target, args.pages // args.rounds, args))


def ratios(two: list[float], one: list[float]) -> list[float]:
    """The paired per-round ratios, sorted."""
    return sorted(b / a for a, b in zip(one, two, strict=True))


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6, help="alternating rounds per phase")
    parser.add_argument("--batches", type=int, default=120, help="timed batches per server")
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--warmup", type=int, default=8, help="untimed batches first")
    parser.add_argument("--pages", type=int, default=1200, help="timed query pages per server")
    parser.add_argument("--page-size", type=int, default=50)
    parser.add_argument("--in-flight", type=int, default=8, help="concurrent calls/connections")
    args = parser.parse_args()
    rng = random.Random(7)
    total = args.warmup + args.batches // args.rounds * args.rounds
    bodies = {
        n: [
            request_bytes(
                [make_record(rng, i) for i in range(args.batch_size)],
                f"bench-processes-{n}-{b}",
                "json",
            )
            for b in range(total)
        ]
        for n in (1, 2)
    }
    with contextlib.ExitStack() as stack:
        targets = []
        for n in (1, 2):
            url = stack.enter_context(
                bench_database(args.database_url, f"costsim_bench_processes_{n}")
            )
            server = stack.enter_context(service_server(url, env={"COSTSIM_PROCESSES": str(n)}))
            meter = Meter(server.pid, f"costsim_bench_processes_{n}")
            targets.append(Target(n, server.address, meter, bodies[n]))
        asyncio.run(run_rounds(targets, args))
        for n in (1, 2):
            url = make_url(args.database_url).set(database=f"costsim_bench_processes_{n}")
            with psycopg.connect(libpq_url(url.render_as_string(hide_password=False))) as conn:
                (count,) = conn.execute("SELECT count(*) FROM costsim_provenance").fetchone() or (
                    0,
                )
            if count != total * args.batch_size:
                raise RuntimeError(f"{count} rows stored, expected {total * args.batch_size}")
    one, two = targets
    ingest_ratios = ratios(two.ingest, one.ingest)
    query_ratios = ratios(two.query, one.query)
    for target in targets:
        print(
            f"--processes {target.processes}: ingest {statistics.median(target.ingest):,.0f} "
            f"rows/s (cores busy: {summed(target.ingest_usage).share()}), query "
            f"{statistics.median(target.query):,.1f} pages/s of {args.page_size} "
            f"(cores busy: {summed(target.query_usage).share()})",
            flush=True,
        )
    print(
        f"per-round ratios 2/1: ingest {[round(r, 2) for r in ingest_ratios]}, "
        f"query {[round(r, 2) for r in query_ratios]}"
    )
    result = {
        "bench": "processes",
        "cpus": len(os.sched_getaffinity(0)),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "rounds": args.rounds,
        "batch_size": args.batch_size,
        "batches": args.batches,
        "page_size": args.page_size,
        "pages": args.pages,
        "in_flight": args.in_flight,
        "ingest_rows_per_s_1": round(statistics.median(one.ingest), 1),
        "ingest_rows_per_s_2": round(statistics.median(two.ingest), 1),
        "query_pages_per_s_1": round(statistics.median(one.query), 2),
        "query_pages_per_s_2": round(statistics.median(two.query), 2),
        "ingest_ratio_2_over_1": round(statistics.median(ingest_ratios), 3),
        "query_ratio_2_over_1": round(statistics.median(query_ratios), 3),
        "ingest_ratio_range": [round(ingest_ratios[0], 3), round(ingest_ratios[-1], 3)],
        "query_ratio_range": [round(query_ratios[0], 3), round(query_ratios[-1], 3)],
        "ingest_cores_1": summed(one.ingest_usage).share(),
        "ingest_cores_2": summed(two.ingest_usage).share(),
        "query_cores_1": summed(one.query_usage).share(),
        "query_cores_2": summed(two.query_usage).share(),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
