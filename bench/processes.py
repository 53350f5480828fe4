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
``ingest_ratio_2_over_1`` and ``query_ratio_2_over_1``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import time
from collections.abc import Awaitable, Callable

import grpc
import psycopg
from _common import base_parser, bench_database, libpq_url, service_server
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


def measure(address: str, bodies: list[bytes], args: argparse.Namespace) -> tuple[float, float]:
    """(ingest rows/s, query pages/s) against the server at ``address``."""
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

    async def both() -> tuple[float, float]:
        async def write_timed(channel: grpc.aio.Channel, n: int) -> None:
            await write(channel, warmup + n)

        await run_phase(address, in_flight, write, warmup)
        timed = len(bodies) - warmup
        seconds = await run_phase(address, in_flight, write_timed, timed)
        ingest = timed * args.batch_size / seconds
        await run_phase(address, in_flight, read, warmup * 4)
        seconds = await run_phase(address, in_flight, read, pages)
        return ingest, pages / seconds

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
    results: dict[int, tuple[float, float]] = {}
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
                results[processes] = measure(server.address, bodies, args)
            reset(conn, expect=total * args.batch_size)
            ingest, query = results[processes]
            print(
                f"--processes {processes}: ingest {ingest:,.0f} rows/s, "
                f"query {query:,.1f} pages/s of {args.page_size}",
                flush=True,
            )
    (ingest_1, query_1), (ingest_2, query_2) = results[1], results[2]
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
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
