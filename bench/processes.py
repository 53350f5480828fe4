"""Throughput of ``serve --processes 1`` against ``--processes 2``, in the same run.

What is measured, for each process count, on a real ``costsim-analytics serve`` subprocess
over PostgreSQL (its own database, emptied between the two servers):

* ingest: provenance rows/s of WriteProvenanceBatch requests (payload as ``payload_json``,
  each with its request id), ``--in-flight`` at a time over as many connections of their own;
* query: pages/s of QueryProvenance streams of ``--page-size`` messages over the rows just
  written, ``--in-flight`` at a time the same way.

Requests are serialised before the clock starts and responses are not decoded, so the client
(this process, one asyncio loop) spends as little of the machine as it can; it still shares
the machine's cores with the server processes and PostgreSQL. With SO_REUSEPORT the kernel
spreads the connections over the processes. The JSON last line has the raw rates and
``ingest_ratio_2_over_1`` and ``query_ratio_2_over_1``, and for each phase how many cores
were busy on average: the server processes, this client, and the rest of the machine
(PostgreSQL, and anything else running), which says what the cores allow.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import psycopg
from _common import base_parser, bench_database, client_cpu_s, libpq_url, service_server
from ingest import make_record, request_bytes, reset

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


def process_tree_cpu_s(pid: int) -> float:
    """CPU seconds of ``pid`` and its children (the parent and its server processes, Linux)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(entry.name) == pid or int(fields[1]) == pid:
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def machine_busy_s() -> float:
    """CPU seconds all cores spent on anything but idle and iowait so far (Linux)."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]
    return (sum(values[:8]) - idle) / os.sysconf("SC_CLK_TCK")


@dataclass
class Usage:
    """CPU seconds used over a phase: by the server processes, this client, the machine."""

    server: float = 0.0
    client: float = 0.0
    machine: float = 0.0
    seconds: float = 0.0

    def share(self) -> dict[str, float]:
        """Cores busy on average: server, client, the rest (PostgreSQL, other work)."""
        s = self.seconds
        rest = self.machine - self.server - self.client
        return {
            "server_cores": round(self.server / s, 2),
            "client_cores": round(self.client / s, 2),
            "other_cores": round(rest / s, 2),
        }


class Meter:
    """Measures the CPU of one phase (``with meter.phase(usage):``)."""

    def __init__(self, server_pid: int) -> None:
        self.server_pid = server_pid

    @contextlib.contextmanager
    def phase(self, usage: Usage) -> Iterator[None]:
        """Fill ``usage`` with what the block used."""
        marks = (
            process_tree_cpu_s(self.server_pid),
            client_cpu_s(),
            machine_busy_s(),
            time.perf_counter(),
        )
        yield
        usage.server = process_tree_cpu_s(self.server_pid) - marks[0]
        usage.client = client_cpu_s() - marks[1]
        usage.machine = machine_busy_s() - marks[2]
        usage.seconds = time.perf_counter() - marks[3]


def measure(
    address: str, bodies: list[bytes], args: argparse.Namespace, meter: Meter
) -> tuple[float, float, Usage, Usage]:
    """(ingest rows/s, query pages/s, their CPU usage) against the server at ``address``."""
    in_flight: int = args.in_flight
    pages: int = args.pages
    page_size: int = args.page_size
    warmup: int = args.warmup

    async def write(channel: grpc.aio.Channel, n: int) -> None:
        call = channel.unary_unary(
            SERVICE + "WriteProvenanceBatch",
            request_serializer=identity,
            response_deserializer=identity,
        )
        await call(bodies[n], timeout=120)

    query = pb.QueryProvenanceRequest(page_size=page_size).SerializeToString()

    async def read(channel: grpc.aio.Channel, _n: int) -> None:
        call = channel.unary_stream(
            SERVICE + "QueryProvenance",
            request_serializer=identity,
            response_deserializer=identity,
        )
        got = 0
        async for _ in call(query, timeout=120):
            got += 1
        if got != page_size:
            raise RuntimeError(f"a page of {got} messages, expected {page_size}")

    ingest_usage, query_usage = Usage(), Usage()

    async def both() -> tuple[float, float, Usage, Usage]:
        async def write_timed(channel: grpc.aio.Channel, n: int) -> None:
            await write(channel, warmup + n)

        await run_phase(address, in_flight, write, warmup)
        timed = len(bodies) - warmup
        with meter.phase(ingest_usage):
            seconds = await run_phase(address, in_flight, write_timed, timed)
        ingest = timed * args.batch_size / seconds
        await run_phase(address, in_flight, read, warmup * 4)
        with meter.phase(query_usage):
            seconds = await run_phase(address, in_flight, read, pages)
        return ingest, pages / seconds, ingest_usage, query_usage

    return asyncio.run(both())


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=80, help="timed batches per server")
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--warmup", type=int, default=8, help="untimed batches first")
    parser.add_argument("--pages", type=int, default=600, help="timed query pages per server")
    parser.add_argument("--page-size", type=int, default=50)
    parser.add_argument("--in-flight", type=int, default=8, help="concurrent calls/connections")
    args = parser.parse_args()
    rng = random.Random(7)
    total = args.warmup + args.batches
    results: dict[int, tuple[float, float, Usage, Usage]] = {}
    with (
        bench_database(args.database_url, "costsim_bench_processes") as url,
        psycopg.connect(libpq_url(url), autocommit=True) as conn,
    ):
        for processes in (1, 2):
            reset(conn)
            bodies = [
                request_bytes(
                    [make_record(rng, n) for n in range(args.batch_size)],
                    f"bench-processes-{processes}-{b}",
                    "json",
                )
                for b in range(total)
            ]
            env = {"COSTSIM_PROCESSES": str(processes)}
            with service_server(url, env=env) as server:
                results[processes] = measure(server.address, bodies, args, Meter(server.pid))
            reset(conn, expect=total * args.batch_size)
            ingest, query, ingest_usage, query_usage = results[processes]
            print(
                f"--processes {processes}: ingest {ingest:,.0f} rows/s "
                f"(cores busy: {ingest_usage.share()}), "
                f"query {query:,.1f} pages/s of {args.page_size} "
                f"(cores busy: {query_usage.share()})",
                flush=True,
            )
    ingest_1, query_1, ingest_cpu_1, query_cpu_1 = results[1]
    ingest_2, query_2, ingest_cpu_2, query_cpu_2 = results[2]
    result = {
        "bench": "processes",
        "cpus": len(os.sched_getaffinity(0)),
        "batch_size": args.batch_size,
        "batches": args.batches,
        "page_size": args.page_size,
        "pages": args.pages,
        "in_flight": args.in_flight,
        "ingest_rows_per_s_1": round(ingest_1, 1),
        "ingest_rows_per_s_2": round(ingest_2, 1),
        "query_pages_per_s_1": round(query_1, 2),
        "query_pages_per_s_2": round(query_2, 2),
        "ingest_ratio_2_over_1": round(ingest_2 / ingest_1, 3),
        "query_ratio_2_over_1": round(query_2 / query_1, 3),
        "ingest_cores_1": ingest_cpu_1.share(),
        "ingest_cores_2": ingest_cpu_2.share(),
        "query_cores_1": query_cpu_1.share(),
        "query_cores_2": query_cpu_2.share(),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
