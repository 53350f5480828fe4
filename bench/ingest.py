"""WriteProvenanceBatch end to end against a plain COPY of the same rows.

What is measured: rows/s of WriteProvenanceBatch through a real ``costsim-analytics serve``
subprocess into PostgreSQL (client: this process, grpc.aio), and rows/s of psycopg
``cursor.copy()`` + ``write_row`` of the same rows into the same table (``costsim_provenance``,
with its indexes) in the same run. Their ratio is the result (target: at least 0.4).

How: a fresh database is created and migrated, then dropped at the end. Every record (run ids,
~600-byte payloads with skill plans) is built and every request serialised before any timing,
so the client is not the bottleneck; the server validates, hashes and stores them. Each
variant writes ``--warmup`` untimed batches, then ``--batches`` timed ones, into a freshly
TRUNCATEd table. The service runs with the payload sent as ``payload_json`` text with the
caller's hashes, as text without hashes, and as a ``google.protobuf.Struct`` without hashes,
each with 1 and with 2 calls in flight; the best variant counts and is named, and the
others are printed beside it. COPY writes one batch per transaction, like the service, once
before and once after the service phases; their mean counts. p50/p99 are the latency of one
batch call with 1 in flight (nearest rank: with 30 batches, p99 is the slowest one).
"""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import time
from datetime import UTC, datetime
from typing import Any

import grpc
import psycopg
from _common import base_parser, bench_database, libpq_url, percentile, service_server

from costsim.analytics.v1 import analytics_pb2 as pb
from costsim_analytics.engines.canonical import canonical_json, content_hash

ENCODINGS = ("json+hashes", "json", "struct")
METHOD = "/costsim.analytics.v1.AnalyticsService/WriteProvenanceBatch"
COPY_SQL = (
    "COPY costsim_provenance (run_id, tenant_id, variant_slug, source, model_version,"
    " adapter_version, commit_sha, input_hash, output_hash, v1_cost, v2_cost, cost_delta,"
    " payload, runtime_ms, created_at) FROM STDIN"
)
MODELS = ["gpt-4o-mini", "claude-3-5-haiku", "llama-3.1-70b"]
HOSTS = ["api.stripe.com", "hooks.slack.com", "api.github.com", "maps.googleapis.com"]


def make_payload(rng: random.Random, n: int) -> dict[str, Any]:
    """A realistic simulation payload of about 600 bytes of canonical JSON."""
    plan: list[dict[str, Any]] = [
        {
            "skill": "llm_invoke",
            "params": {
                "model": rng.choice(MODELS),
                "max_tokens": rng.choice([256, 512, 1024]),
                "temperature": round(rng.random(), 2),
                "prompt": f"Summarise ticket #{n} for on-call",
            },
        },
        {
            "skill": "http_call",
            "params": {
                "method": rng.choice(["GET", "POST"]),
                "timeout_ms": 3000,
                "retries": 2,
                "url": f"https://{rng.choice(HOSTS)}/v1/items/{n}",
            },
        },
        {"skill": "json_transform", "params": {"expression": "$.data[*].id"}},
    ]
    steps = [{"skill": s["skill"], "cost_cents": round(rng.uniform(0.1, 40), 3)} for s in plan]
    output = {
        "estimated_cost_cents": round(sum(s["cost_cents"] for s in steps), 3),
        "steps": steps,
        "tokens": {"prompt": rng.randint(200, 4000), "completion": rng.randint(20, 1000)},
        "confidence": round(rng.random(), 3),
    }
    return {
        "input": {"plan": plan, "budget_cents": rng.randint(100, 10_000)},
        "output": output,
        "status": "success",
    }


def make_record(rng: random.Random, n: int) -> dict[str, Any]:
    """Record number ``n``, as a caller would send it (without hashes)."""
    v1 = round(rng.uniform(1, 500), 2)
    return {
        "run_id": f"bench-run-{n:08d}",
        "tenant_id": f"tenant-{n % 37:03d}",
        "variant_slug": rng.choice(["v1", "v2", "canary"]),
        "source": rng.choice(["sandbox", "canary", "backfill"]),
        "model_version": "costmodel-2.4.1",
        "adapter_version": "adapter-1.9.0",
        "commit_sha": f"{rng.getrandbits(160):040x}",
        "v1_cost": v1,
        "v2_cost": round(v1 * rng.uniform(0.8, 1.2), 2),
        "payload": make_payload(rng, n),
        "runtime_ms": rng.randint(5, 5000),
    }


def request_bytes(batch: list[dict[str, Any]], request_id: str, encoding: str) -> bytes:
    """A serialised request; hashes are left empty, so the server computes them.

    ``encoding`` "struct" sends the payload as google.protobuf.Struct, "json" as the
    ``payload_json`` text field; "json+hashes" also sends input_hash and output_hash, computed
    the way docs/domain.md tells a caller to (what a high-volume writer would do).
    """
    req = pb.WriteProvenanceBatchRequest(request_id=request_id)
    for rec in batch:
        msg = req.records.add(**{k: v for k, v in rec.items() if k != "payload"})
        if encoding.startswith("json"):
            msg.payload_json = json.dumps(rec["payload"])
        else:
            msg.payload.update(rec["payload"])
        if encoding == "json+hashes":
            msg.input_hash = content_hash(rec["payload"]["input"])
            msg.output_hash = content_hash(rec["payload"]["output"])
    return req.SerializeToString()


def copy_row(rec: dict[str, Any], now: datetime) -> tuple[Any, ...]:
    """The row the service would store for ``rec`` (same hashes, canonical payload)."""
    p = rec["payload"]
    return (
        *(rec[k] for k in ("run_id", "tenant_id", "variant_slug", "source", "model_version")),
        *(rec[k] for k in ("adapter_version", "commit_sha")),
        *(content_hash(p[k]) for k in ("input", "output")),
        *(rec[k] for k in ("v1_cost", "v2_cost")),
        rec["v2_cost"] - rec["v1_cost"],
        canonical_json(p),
        rec["runtime_ms"],
        now,
    )


async def run_service(
    address: str, requests: list[bytes], warmup: int, in_flight: int
) -> tuple[float, list[float]]:
    """Send every request, ``in_flight`` at a time; return (timed seconds, latencies in s)."""
    async with grpc.aio.insecure_channel(address) as channel:
        call = channel.unary_unary(
            METHOD, response_deserializer=pb.WriteProvenanceBatchResponse.FromString
        )

        async def send_all(items: list[bytes]) -> list[float]:
            queue = list(reversed(items))
            latencies: list[float] = []

            async def worker() -> None:
                while queue:
                    body = queue.pop()
                    start = time.perf_counter()
                    response = await call(body, timeout=60)
                    latencies.append(time.perf_counter() - start)
                    if response.replayed or not response.ids:
                        raise RuntimeError(f"unexpected answer: {response}")

            await asyncio.gather(*(worker() for _ in range(in_flight)))
            return latencies

        await send_all(requests[:warmup])
        start = time.perf_counter()
        latencies = await send_all(requests[warmup:])
        return time.perf_counter() - start, latencies


def run_copy(conn: psycopg.Connection, batches: list[list[tuple[Any, ...]]], warmup: int) -> float:
    """COPY each batch in its own transaction; return the seconds of the timed batches."""
    timed = 0.0
    for n, rows in enumerate(batches):
        start = time.perf_counter()
        with conn.transaction(), conn.cursor() as cur, cur.copy(COPY_SQL) as copy:
            for row in rows:
                copy.write_row(row)
        timed += time.perf_counter() - start if n >= warmup else 0.0
    return timed


def reset(conn: psycopg.Connection, expect: int | None = None) -> None:
    """Check the row count of the last phase, then empty the tables and checkpoint."""
    if expect is not None:
        (count,) = conn.execute("SELECT count(*) FROM costsim_provenance").fetchone() or (0,)
        if count != expect:
            raise RuntimeError(f"{count} rows stored, expected {expect}")
    conn.execute("TRUNCATE costsim_provenance, costsim_idempotency_keys")
    conn.execute("CHECKPOINT")


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=30, help="timed batches per variant")
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--warmup", type=int, default=3, help="untimed batches first")
    parser.add_argument("--request-ids", action="store_true", help="send idempotency keys")
    args = parser.parse_args()
    size, total = args.batch_size, (args.warmup + args.batches) * args.batch_size
    timed_rows = args.batches * size

    rng = random.Random(42)
    records = [make_record(rng, n) for n in range(total)]
    chunks = [records[i : i + size] for i in range(0, total, size)]
    now = datetime.now(UTC)
    copy_batches = [[copy_row(rec, now) for rec in chunk] for chunk in chunks]
    payload_bytes = sum(len(row[-3]) for row in copy_batches[0]) / size
    print(f"{total} records in batches of {size}; payload ~{payload_bytes:.0f} bytes of JSON")

    rates: dict[str, float] = {}
    cpu_ms: dict[str, float] = {}
    copy_rates: list[float] = []
    latencies_by: dict[str, list[float]] = {}
    with (
        bench_database(args.database_url, "costsim_bench_ingest") as url,
        psycopg.connect(libpq_url(url), autocommit=True) as conn,
    ):
        # An untimed pass warms the new database up; then COPY runs before and after the
        # service phases, so that drifts in machine load hit both.
        for timed in (False, True):
            reset(conn)
            rate = timed_rows / run_copy(conn, copy_batches, args.warmup)
            copy_rates += [rate] if timed else []
        reset(conn, expect=total)
        with service_server(url) as server:
            for encoding in ENCODINGS:
                for in_flight in (1, 2):
                    name = f"{encoding}/{in_flight}"
                    key = f"bench-{encoding}-{in_flight}-{{}}" if args.request_ids else ""
                    reqs = [request_bytes(c, key.format(n), encoding) for n, c in enumerate(chunks)]
                    cpu = server.cpu_s()
                    seconds, lat = asyncio.run(
                        run_service(server.address, reqs, args.warmup, in_flight)
                    )
                    cpu_ms[name] = (server.cpu_s() - cpu) * 1000 / len(chunks)
                    rates[name] = timed_rows / seconds
                    if in_flight == 1:
                        latencies_by[encoding] = lat
                    print(
                        f"service, payload as {encoding}, {in_flight} in flight:"
                        f" {rates[name]:>9,.0f} rows/s"
                        f" (server process CPU {cpu_ms[name]:.0f} ms per batch)"
                    )
                    reset(conn, expect=total)
        copy_rates.append(timed_rows / run_copy(conn, copy_batches, args.warmup))
        reset(conn, expect=total)
    copy_rate = statistics.mean(copy_rates)
    best = max(rates, key=rates.__getitem__)
    ratio = rates[best] / copy_rate
    struct_best = max((k for k in rates if k.startswith("struct")), key=rates.__getitem__)
    latencies = latencies_by[best.split("/")[0]]
    p50, p99 = (percentile(latencies, p) * 1000 for p in (50, 99))
    runs = " and ".join(f"{r:,.0f}" for r in copy_rates)
    print(f"COPY (psycopg write_row):  {copy_rate:>9,.0f} rows/s (mean of {runs})")
    print(f"ratio service/COPY: {ratio:.2f} (payload/in flight {best}; target 0.4)")
    print(f"ratio with the payload as a Struct: {rates[struct_best] / copy_rate:.2f}")
    variant = best.split("/")[0]
    print(f"one {size}-record batch ({variant}), 1 in flight: p50 {p50:.1f} ms, p99 {p99:.1f} ms")
    result = {
        "bench": "ingest",
        "ratio": round(ratio, 3),
        "target": 0.4,
        "service_rows_s": round(rates[best]),
        "service_variant": best,
        "struct_ratio": round(rates[struct_best] / copy_rate, 3),
        "service_rows_s_by_variant": {n: round(r) for n, r in rates.items()},
        "copy_rows_s": round(copy_rate),
        "p50_ms": round(p50, 1),
        "p99_ms": round(p99, 1),
        "server_cpu_ms_per_batch": {n: round(c, 1) for n, c in cpu_ms.items()},
        "batch_size": size,
        "batches": args.batches,
        "request_ids": args.request_ids,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
