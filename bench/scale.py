"""Report and provenance queries at 1,000,000 reports and 10,000,000 provenance rows.

What is measured, in one run, on a fresh PostgreSQL database:

- QueryCanaryReports end to end through gRPC (a real ``costsim-analytics serve`` subprocess,
  each call reading its whole stream): the first page (50 rows) for ``status = fail`` in a
  30-day window, for ``passed = false``, for no filter, and a deep page of the unfiltered query
  resumed by a page token 100,000 rows in; p50/p95 over ``--calls`` calls each, with the same
  SQL run directly through psycopg beside it, and the FLOOR: that SQL's p50 plus the p50 of a
  bare grpc.aio stream of the same 50 messages (``bench/reports.py --serve-bare`` in a
  subprocess, serving the service's own first page prebuilt, no database). Targets: every
  variant's p50 at most 1.5x its floor (``worst_p50_over_floor``), p95 under 10 ms end to end,
  and the deep page's p95 within 1.2x of the first page's.
- WriteProvenanceBatch rows/s (batches of 1,000, payload as JSON text with the caller's hashes,
  2 calls in flight) into the seeded partitioned table against the same into an empty one.
  Target: at least 0.8.

Seeding is server-side SQL (generate_series): 1,000,000 reports over two years and 10,000,000
provenance rows of ~600-byte payloads over twelve months (13 monthly partitions). On a 2-core
machine that takes about 10 minutes and about 12 GB of disk; ``--reports``/``--provenance``
make it smaller. ``--explain`` prints ``EXPLAIN (ANALYZE, BUFFERS)`` of every query the drivers
issue; ``--before`` first seeds the schema as it was before revision 0004 (plain table, old
indexes), explains, then migrates (timed) and explains again: the audit in docs/indexes.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import psycopg
from _common import (
    CLI,
    Server,
    base_parser,
    bench_database,
    libpq_url,
    service_server,
    subprocess_server,
)
from ingest import make_record, request_bytes, run_service
from sqlalchemy import Select, event
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import make_url

from costsim.analytics.v1 import analytics_pb2 as pb
from costsim_analytics.drivers import partitions
from costsim_analytics.drivers.canary_report_driver import SqlCanaryReportDriver
from costsim_analytics.drivers.canary_report_driver import stream_statement as report_query
from costsim_analytics.drivers.database import make_engine
from costsim_analytics.drivers.idempotency_driver import SqlIdempotencyDriver
from costsim_analytics.drivers.provenance_driver import SqlProvenanceDriver
from costsim_analytics.drivers.schema import downgrade
from costsim_analytics.engines.drift import DriftStatsQuery
from costsim_analytics.engines.pagination import Cursor, encode_token, filter_fingerprint
from costsim_analytics.engines.provenance import ProvenanceFilter
from costsim_analytics.engines.reports import ReportFilter

METHOD = "/costsim.analytics.v1.AnalyticsService/QueryCanaryReports"
PRE_SCALE_REVISION = "0003_golden_datasets"
SCALE_DB = "costsim_bench_scale"
PAGE = 50
DEEP = 100_000  # lowered to half the reports for small runs

SEED_REPORTS = """
INSERT INTO costsim_canary_reports (run_id, timestamp, status, total_samples, matching_samples,
  minor_drift_samples, major_drift_samples, median_cost_diff, p90_cost_diff, kl_divergence,
  outlier_count, passed, failure_reasons_json, artifact_paths_json, created_at, baseline_model,
  candidate_model, details_json)
SELECT 'scale-' || g, now() - (%(n)s - g) * %(spacing)s * interval '1 second', s.status,
  100, 80, 12, 8, (g %% 7) / 10.0, (g %% 11) / 2.0, (g %% 13) / 40.0, g %% 9,
  s.status = 'pass',
  CASE WHEN s.status = 'fail' THEN '["KL divergence 0.31 > 0.2"]'::jsonb ELSE '[]'::jsonb END,
  jsonb_build_array('/var/lib/costsim/artifacts/scale-' || g || '/report.json'), now(), 'v1',
  'v2', '{"seed": 0, "sample_source": "provenance"}'::jsonb
FROM generate_series(1, %(n)s) g,
  LATERAL (SELECT CASE WHEN abs(hashtext(g::text)) %% 100 < 80 THEN 'pass'
                       WHEN abs(hashtext(g::text)) %% 100 < 92 THEN 'fail'
                       WHEN abs(hashtext(g::text)) %% 100 < 97 THEN 'error'
                       ELSE 'skipped' END AS status) s
"""

SEED_PROVENANCE = """
INSERT INTO costsim_provenance (run_id, tenant_id, variant_slug, source, model_version,
  adapter_version, commit_sha, input_hash, output_hash, v1_cost, v2_cost, cost_delta, payload,
  runtime_ms, created_at)
SELECT 'run-' || g, 'tenant-' || g %% 100,
  (ARRAY['v1','v2','v2','v2','v2','v2','v2','v2','canary','v2'])[g %% 10 + 1],
  (ARRAY['sandbox','canary','manual','backfill'])[g %% 4 + 1], '2.0.0', '1.3.0', 'abc123',
  md5(g::text) || md5((g + 1)::text), md5((g * 7)::text) || md5((g * 7 + 1)::text),
  c1, c2, c2 - c1,
  jsonb_build_object(
    'input', jsonb_build_object('budget_cents', 1000, 'plan', jsonb_build_array(
      jsonb_build_object('skill', 'llm_invoke', 'params', jsonb_build_object(
        'prompt', 'Summarise ticket #' || g || ' for on-call', 'model', 'gpt-4o-mini',
        'max_tokens', 512, 'temperature', 0.2)),
      jsonb_build_object('skill', 'http_call', 'params', jsonb_build_object(
        'url', 'https://api.example.com/v1/items/' || g, 'timeout_s', 5, 'retries', 2)),
      jsonb_build_object('skill', 'json_transform', 'params', jsonb_build_object(
        'expression', '$.data[*].id')))),
    'output', jsonb_build_object('cost_cents', c2, 'duration_ms', 2500, 'feasible', true,
      'confidence', 0.87, 'steps', jsonb_build_array(
        jsonb_build_object('skill', 'llm_invoke', 'cost_cents', c2 / 2),
        jsonb_build_object('skill', 'http_call', 'cost_cents', c2 / 4))),
    'status', CASE WHEN g %% 20 = 0 THEN 'error' ELSE 'success' END),
  g %% 5000, now() - (%(total)s - g) * %(spacing)s * interval '1 second'
FROM (SELECT g, (g %% 97)::float8 / 3 AS c1, (g %% 89)::float8 / 2.7 AS c2
      FROM generate_series(%(lo)s, %(hi)s) g) x
"""


def migrate(url: str) -> float:
    """``costsim-analytics migrate`` to head; return the seconds it took."""
    start = time.perf_counter()
    subprocess.run([CLI, "migrate", "--database-url", url], check=True, capture_output=True)
    return time.perf_counter() - start


def seed(url: str, reports: int, provenance: int) -> dict[str, float]:
    """Seed both tables with server-side SQL; return seconds per table."""
    took: dict[str, float] = {}
    engine = make_engine(url)
    with engine.begin() as conn:  # partitions for the months the rows will land in
        partitions.ensure_range(conn, datetime.now(UTC) - timedelta(days=366), datetime.now(UTC))
    engine.dispose()
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        start = time.perf_counter()
        spacing = 2 * 365 * 86400 / max(reports, 1)
        conn.execute(SEED_REPORTS, {"n": reports, "spacing": spacing})
        took["reports"] = time.perf_counter() - start
        start = time.perf_counter()
        spacing = 365 * 86400 / max(provenance, 1)
        chunk = 500_000
        for lo in range(1, provenance + 1, chunk):
            hi = min(provenance, lo + chunk - 1)
            conn.execute(
                SEED_PROVENANCE, {"lo": lo, "hi": hi, "total": provenance, "spacing": spacing}
            )
            print(f"  provenance rows seeded: {hi:,}", flush=True)
        took["provenance"] = time.perf_counter() - start
        conn.execute("ANALYZE")
        (size,) = conn.execute("SELECT pg_database_size(current_database())").fetchone() or (0,)
        took["database_gb"] = size / 1e9
    return took


def sql_of(stmt: Select[Any]) -> tuple[str, dict[str, Any]]:
    """The SQL text and parameters the driver sends for ``stmt`` (psycopg paramstyle)."""
    compiled = stmt.compile(
        dialect=postgresql.psycopg.dialect(), compile_kwargs={"render_postcompile": True}
    )  # type: ignore[attr-defined]
    return str(compiled), dict(compiled.params)


def deep_cursor(url: str, depth: int) -> Cursor:
    """The sort key of the report ``depth`` rows into the unfiltered newest-first order."""
    with psycopg.connect(libpq_url(url)) as conn:
        row = conn.execute(
            "SELECT timestamp, id FROM costsim_canary_reports ORDER BY timestamp DESC, id DESC"
            " OFFSET %s LIMIT 1",
            (depth,),
        ).fetchone()
    assert row is not None, "not enough reports for the deep page"
    return Cursor(row[0], row[1])


def report_cases(url: str) -> dict[str, tuple[ReportFilter, Cursor | None]]:
    now = datetime.now(UTC)
    return {
        "status=fail, 30 days": (
            ReportFilter(status="fail", start_time=now - timedelta(days=30), end_time=now),
            None,
        ),
        "passed=false": (ReportFilter(passed=False), None),
        "no filter": (ReportFilter(), None),
        f"no filter, {DEEP:,} deep": (ReportFilter(), deep_cursor(url, DEEP)),
    }


def provenance_cases(now: datetime) -> dict[str, ProvenanceFilter]:
    return {
        "provenance, no filter": ProvenanceFilter(),
        "provenance, tenant": ProvenanceFilter(tenant_id="tenant-42"),
        "provenance, variant v1": ProvenanceFilter(variant_slug="v1"),
        "provenance, run_id": ProvenanceFilter(run_id="run-123456"),
        "provenance, 7-day window": ProvenanceFilter(
            start_time=now - timedelta(days=7), end_time=now
        ),
    }


def driver_queries(url: str) -> list[tuple[str, str, Any]]:
    """Every SELECT the drivers send for the bench's cases, as sent (SQL text and parameters).

    The drivers run for real, on a connection whose ``before_cursor_execute`` event records
    each statement, inside a transaction that is rolled back: what is explained is exactly the
    SQL of the code, not a copy of it. Writes (COPY, the idempotency claim) are left out:
    ``EXPLAIN ANALYZE`` would perform them.
    """
    now = datetime.now(UTC)
    captured: list[tuple[str, str, Any]] = []
    current = [""]
    engine = make_engine(url)

    @event.listens_for(engine, "before_cursor_execute")
    def record(_conn: Any, _cursor: Any, statement: str, params: Any, *_: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            captured.append((current[0], statement, params))

    def run(name: str, call: Callable[[], object]) -> None:
        current[0] = name
        before = len(captured)
        call()
        for i in range(before + 1, len(captured)):  # a call that sends several statements
            captured[i] = (f"{name} ({i - before + 1})", *captured[i][1:])

    try:
        with engine.connect() as conn, conn.begin():
            reports = SqlCanaryReportDriver(conn)
            prov = SqlProvenanceDriver(conn)
            keys = SqlIdempotencyDriver(conn)
            for name, (flt, after) in report_cases(url).items():
                run(
                    f"reports.stream: {name}",
                    lambda f=flt, a=after: list(reports.stream(f, a, PAGE)),
                )
            run("reports.get_by_run_id", lambda: reports.get_by_run_id("scale-777"))
            run(
                "reports.run_ids_before (retention, 180 days)",
                lambda: reports.run_ids_before(now - timedelta(days=180)),
            )
            for name, pflt in provenance_cases(now).items():
                run(f"provenance.stream: {name}", lambda f=pflt: list(prov.stream(f, None, PAGE)))
            run("provenance.drift_stats: all", lambda: prov.drift_stats(DriftStatsQuery()))
            run(
                "provenance.drift_stats: tenant, 7 days",
                lambda: prov.drift_stats(
                    DriftStatsQuery("tenant-42", "", now - timedelta(days=7), now)
                ),
            )
            ids: list[int] = []
            run(
                "provenance.sample_candidates (canary, 7 days, 100,000)",
                lambda: ids.extend(prov.sample_candidates(now - timedelta(days=7), 100_000)),
            )
            run("provenance.plan_inputs (canary, 1,000 ids)", lambda: prov.plan_inputs(ids[:1000]))
            run(
                "provenance.remove_before (retention --dry-run, 90 days)",
                lambda: prov.remove_before(now - timedelta(days=90), dry_run=True),
            )
            run("idempotency.get", lambda: keys.get("analytics.provenance_batch", "bench-1"))
            run(
                "idempotency.delete_before (retention --dry-run)",
                lambda: keys.delete_before(now - timedelta(days=30), dry_run=True),
            )
            conn.rollback()
    finally:
        engine.dispose()
    return captured


def explain(url: str, title: str) -> None:
    """Print EXPLAIN (ANALYZE, BUFFERS) for every query the drivers issue."""
    queries = driver_queries(url)
    with psycopg.connect(libpq_url(url)) as conn:
        for name, sql, params in queries:
            plan = conn.execute("EXPLAIN (ANALYZE, BUFFERS) " + sql, params).fetchall()
            print(f"\n### {title}: {name}\n")
            print("\n".join(line for (line,) in plan))
            conn.rollback()


def timed(call: Callable[[], object], calls: int) -> list[float]:
    """Milliseconds of each of ``calls`` calls."""
    out = []
    for _ in range(calls):
        start = time.perf_counter()
        call()
        out.append((time.perf_counter() - start) * 1000)
    return out


def p(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def bare_server(stack: contextlib.ExitStack, address: str, tmp: str) -> Server:
    """The floor's transport: a bare grpc.aio server streaming the service's own 50 messages.

    The messages are the service's first page (no filter), read as raw bytes; the server is
    ``bench/reports.py --serve-bare`` in a subprocess, which yields them prebuilt with no
    database and no service code in between.
    """
    with grpc.insecure_channel(address) as channel:
        stream = channel.unary_stream(METHOD)  # raw bytes: no deserializer
        body = pb.QueryCanaryReportsRequest(page_size=PAGE).SerializeToString()
        messages: list[bytes] = list(stream(body, timeout=30))
    path = Path(tmp, "page.bin")
    path.write_bytes(b"".join(struct.pack(">I", len(m)) + m for m in messages))
    argv = [sys.executable, str(Path(__file__).with_name("reports.py")), "--serve-bare", str(path)]
    return stack.enter_context(subprocess_server(argv))


def query_latencies(
    url: str, address: str, bare_address: str, calls: int
) -> tuple[dict[str, dict[str, float]], float]:
    """Per query variant: gRPC and SQL p50/p95 and the floor; and the bare stream's p50."""
    results: dict[str, dict[str, float]] = {}
    with (
        grpc.insecure_channel(address) as channel,
        grpc.insecure_channel(bare_address) as bare_channel,
        psycopg.connect(libpq_url(url)) as conn,
    ):
        stream = channel.unary_stream(
            METHOD, response_deserializer=pb.QueryCanaryReportsResponse.FromString
        )
        bare_stream = bare_channel.unary_stream(
            METHOD, response_deserializer=pb.QueryCanaryReportsResponse.FromString
        )
        bare_body = pb.QueryCanaryReportsRequest(page_size=PAGE).SerializeToString()

        def bare_call() -> None:
            got = list(bare_stream(bare_body, timeout=30))
            assert len(got) == PAGE, len(got)

        timed(bare_call, 10)  # warm up
        bare_ms = timed(bare_call, calls)
        status_enum = {"fail": pb.CANARY_STATUS_FAIL}
        for name, (flt, after) in report_cases(url).items():
            request = pb.QueryCanaryReportsRequest(
                page_size=PAGE, status=status_enum.get(flt.status, 0)
            )
            if flt.passed is not None:
                request.passed = flt.passed
            if flt.start_time and flt.end_time:
                request.start_time.FromDatetime(flt.start_time)
                request.end_time.FromDatetime(flt.end_time)
            if after is not None:
                request.page_token = encode_token(
                    "canary_reports", filter_fingerprint("canary_reports", flt.as_dict()), after
                )
            body = request.SerializeToString()

            def grpc_call(body: bytes = body) -> None:
                got = list(stream(body, timeout=30))
                assert len(got) == PAGE, len(got)

            sql, params = sql_of(report_query(flt, after, PAGE))

            def sql_call(sql: str = sql, params: dict[str, Any] = params) -> None:
                conn.execute(sql, params).fetchall()
                conn.rollback()

            timed(grpc_call, 10)  # warm up
            grpc_ms, sql_ms = timed(grpc_call, calls), timed(sql_call, calls)
            bare_ms += timed(bare_call, calls // 4)  # the floor sampled across the run too
            sql_p50 = statistics.median(sql_ms)
            floor = sql_p50 + statistics.median(bare_ms)
            results[name] = {
                "grpc_p50_ms": round(statistics.median(grpc_ms), 2),
                "grpc_p95_ms": round(p(grpc_ms, 95), 2),
                "sql_p50_ms": round(sql_p50, 2),
                "sql_p95_ms": round(p(sql_ms, 95), 2),
                "floor_p50_ms": round(floor, 2),
                "p50_over_floor": round(statistics.median(grpc_ms) / floor, 2),
            }
            r = results[name]
            print(
                f"{name:<28} gRPC p50 {r['grpc_p50_ms']:6.2f} ms  p95 {r['grpc_p95_ms']:6.2f} ms"
                f"   SQL p50 {r['sql_p50_ms']:6.2f} ms  p95 {r['sql_p95_ms']:6.2f} ms"
                f"   floor p50 {r['floor_p50_ms']:6.2f} ms  ({r['p50_over_floor']:.2f}x)"
            )
    bare_p50 = statistics.median(bare_ms)
    print(f"bare grpc.aio stream of the same {PAGE} messages: p50 {bare_p50:.2f} ms")
    return results, bare_p50


def ingest_rate(url: str, batches: int) -> float:
    """WriteProvenanceBatch rows/s into ``url`` (2 in flight, JSON payloads with hashes)."""
    rng = random.Random(7)
    chunks = [[make_record(rng, b * 1000 + i) for i in range(1000)] for b in range(batches + 3)]
    requests = [request_bytes(c, "", "json+hashes") for c in chunks]
    with service_server(url) as server:
        seconds, _ = asyncio.run(run_service(server.address, requests, 3, 2))
    return batches * 1000 / seconds


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--reports", type=int, default=1_000_000)
    parser.add_argument("--provenance", type=int, default=10_000_000)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--batches", type=int, default=20, help="ingest batches per table")
    parser.add_argument("--explain", action="store_true", help="print the plans")
    parser.add_argument("--before", action="store_true", help="audit: old schema, then migrate")
    parser.add_argument("--keep", action="store_true", help="keep the seeded database")
    parser.add_argument("--reuse", action="store_true", help="measure a kept database")
    parser.add_argument(
        "--db-name", default=SCALE_DB, help="the seeded database's name (default: %(default)s)"
    )
    args = parser.parse_args()
    global DEEP  # one knob for the whole run
    DEEP = min(DEEP, args.reports // 2)
    summary: dict[str, Any] = {
        "bench": "scale",
        "reports": args.reports,
        "provenance": args.provenance,
    }
    with contextlib.ExitStack() as stack:
        empty_url = stack.enter_context(bench_database(args.database_url, f"{args.db_name}_empty"))
        if args.reuse:
            url = make_url(args.database_url).set(database=args.db_name).render_as_string(False)
            # What the kept database holds, not what this run's arguments would have seeded.
            with psycopg.connect(libpq_url(url)) as conn:
                for key, table in (
                    ("reports", "costsim_canary_reports"),
                    ("provenance", "costsim_provenance"),
                ):
                    row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
                    summary[key] = int(row[0]) if row else 0
            args.reports, args.provenance = summary["reports"], summary["provenance"]
            DEEP = min(DEEP, args.reports // 2)
        else:
            url = stack.enter_context(
                bench_database(args.database_url, args.db_name, keep=args.keep)
            )
            if args.before:
                downgrade(url, PRE_SCALE_REVISION)
            print(
                f"seeding {args.reports:,} reports, {args.provenance:,} provenance rows", flush=True
            )
            summary["seed_s"] = {
                k: round(v, 1) for k, v in seed(url, args.reports, args.provenance).items()
            }
            print(f"seeded: {summary['seed_s']}")
        if args.before:
            explain(url, "before")
            summary["migration_s"] = round(migrate(url), 1)
            took = summary["migration_s"]
            print(f"migrated to head (partitioning {args.provenance:,} rows) in {took} s")
            with psycopg.connect(libpq_url(url), autocommit=True) as conn:
                conn.execute("ANALYZE")
        if args.explain or args.before:
            explain(url, "after")
        with service_server(url) as server, tempfile.TemporaryDirectory() as tmp:
            bare = bare_server(stack, server.address, tmp)
            summary["queries"], bare_p50 = query_latencies(
                url, server.address, bare.address, args.calls
            )
        full = ingest_rate(url, args.batches)
        empty = ingest_rate(empty_url, args.batches)
    queries = summary["queries"]
    first = queries["no filter"]["grpc_p95_ms"]
    deep = queries[f"no filter, {DEEP:,} deep"]["grpc_p95_ms"]
    worst = max(q["grpc_p95_ms"] for q in queries.values())
    worst_over_floor = max(q["p50_over_floor"] for q in queries.values())
    summary.update(
        worst_grpc_p95_ms=worst,
        p95_target_ms=10,
        deep_over_first_p95=round(deep / first, 2),
        deep_target=1.2,
        bare_stream_p50_ms=round(bare_p50, 2),
        floor_p50_ms=queries["no filter"]["floor_p50_ms"],
        worst_p50_over_floor=worst_over_floor,
        floor_target=1.5,
        ingest_full_rows_s=round(full),
        ingest_empty_rows_s=round(empty),
        ratio=round(full / empty, 3),
        target=0.8,
    )
    print(f"worst p95 end to end: {worst:.2f} ms (target < 10)")
    print(f"worst p50 / floor (SQL + bare stream): {worst_over_floor:.2f} (target <= 1.5)")
    print(f"deep page p95 / first page p95: {deep / first:.2f} (target <= 1.2)")
    print(
        f"ingest into the {args.provenance:,}-row table: {full:,.0f} rows/s;"
        f" into an empty one: {empty:,.0f} rows/s; ratio {full / empty:.2f} (target 0.8)"
    )
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
