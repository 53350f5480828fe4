"""Each query the drivers issue uses the index meant for it, on PostgreSQL with enough rows
that the planner cares (docs/indexes.md): a change that breaks an index fails here."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from sqlalchemy import Select, select
from sqlalchemy.dialects import postgresql

from costsim_analytics.drivers import partitions, schema
from costsim_analytics.drivers.canary_report_driver import stream_statement as report_query
from costsim_analytics.drivers.database import make_engine
from costsim_analytics.drivers.models import reports_table
from costsim_analytics.drivers.provenance_driver import stream_statement as provenance_query
from costsim_analytics.engines.pagination import Cursor
from costsim_analytics.engines.provenance import ProvenanceFilter
from costsim_analytics.engines.reports import ReportFilter

REPORTS = 60_000
PROVENANCE = 60_000

SEED_REPORTS = """
INSERT INTO costsim_canary_reports (run_id, timestamp, status, total_samples, matching_samples,
  minor_drift_samples, major_drift_samples, outlier_count, passed, failure_reasons_json,
  artifact_paths_json, created_at, baseline_model, candidate_model)
SELECT 'r-' || g, now() - g * interval '10 minutes', s.status, 100, 80, 12, 8, 0,
  s.status = 'pass', '[]', '[]', now(), 'v1', 'v2'
FROM generate_series(1, %(reports)s) g,
  LATERAL (SELECT (ARRAY['pass','pass','pass','pass','pass','pass','pass','pass','fail',
                         'error'])[abs(hashtext(g::text)) %% 10 + 1] AS status) s
"""
SEED_PROVENANCE = """
INSERT INTO costsim_provenance (run_id, tenant_id, variant_slug, source, model_version,
  adapter_version, commit_sha, input_hash, output_hash, payload, runtime_ms, created_at)
SELECT 'run-' || g, 'tenant-' || g %% 50, 'v2', 'sandbox', '', '', '',
  md5(g::text) || md5(g::text), md5(g::text) || md5(g::text),
  '{"status": "success", "input": {"plan": [], "budget_cents": 1}}', 1,
  now() - g * interval '2 minutes'
FROM generate_series(1, %(provenance)s) g
"""


@pytest.fixture(scope="module")
def big_database(postgres: Any) -> str:
    url = postgres.create_database()
    schema.upgrade(url)
    engine = make_engine(url)
    with engine.begin() as conn:
        now = datetime.now(UTC)
        partitions.ensure_range(conn, now - timedelta(minutes=2 * PROVENANCE + 10), now)
    engine.dispose()
    u = make_engine(url).url
    with psycopg.connect(
        host=u.host, port=u.port or 5432, user=u.username, dbname=u.database, autocommit=True
    ) as conn:
        conn.execute(SEED_REPORTS, {"reports": REPORTS})
        conn.execute(SEED_PROVENANCE, {"provenance": PROVENANCE})
        conn.execute("ANALYZE")
    return url


def plan(url: str, stmt: Select[Any]) -> list[dict[str, Any]]:
    """Every node of the plan PostgreSQL picks for ``stmt`` (driver SQL, driver parameters)."""
    compiled = stmt.compile(
        dialect=postgresql.psycopg.dialect(),
        compile_kwargs={"render_postcompile": True},
    )
    u = make_engine(url).url
    with psycopg.connect(
        host=u.host, port=u.port or 5432, user=u.username, dbname=u.database
    ) as conn:
        [(doc,)] = conn.execute(
            "EXPLAIN (FORMAT JSON) " + str(compiled), compiled.params
        ).fetchall()
    out: list[dict[str, Any]] = []
    stack = [doc[0]["Plan"]]
    while stack:
        node = stack.pop()
        out.append(node)
        stack.extend(node.get("Plans", []))
    return out


def non_empty_partitions(url: str) -> set[str]:
    """Partitions holding rows (empty ones are scanned in no time, by any means)."""
    u = make_engine(url).url
    with psycopg.connect(
        host=u.host, port=u.port or 5432, user=u.username, dbname=u.database
    ) as conn:
        rows = conn.execute(
            "SELECT relname FROM pg_class WHERE relname LIKE 'costsim_provenance_%%'"
            " AND relkind = 'r' AND reltuples > 0"
        ).fetchall()
    return {name for (name,) in rows}


def index_names(nodes: list[dict[str, Any]]) -> set[str]:
    return {n["Index Name"] for n in nodes if "Index Name" in n}


def seq_scans(nodes: list[dict[str, Any]]) -> list[str]:
    return [n["Relation Name"] for n in nodes if n["Node Type"] == "Seq Scan"]


NOW = datetime.now(UTC)


@pytest.mark.parametrize(
    ("flt", "after", "index"),
    [
        (
            ReportFilter(status="fail", start_time=NOW - timedelta(days=30), end_time=NOW),
            None,
            "idx_costsim_canary_status_ts",
        ),
        (ReportFilter(status="error"), None, "idx_costsim_canary_status_ts"),
        (ReportFilter(passed=False), None, "idx_costsim_canary_failed_ts"),
        (ReportFilter(), None, "idx_costsim_canary_timestamp"),
        (ReportFilter(), Cursor(NOW - timedelta(days=200), 1), "idx_costsim_canary_timestamp"),
        (
            ReportFilter(status="fail"),
            Cursor(NOW - timedelta(days=200), 1),
            "idx_costsim_canary_status_ts",
        ),
        (
            ReportFilter(passed=False),
            Cursor(NOW - timedelta(days=200), 1),
            "idx_costsim_canary_failed_ts",
        ),
    ],
    ids=["fail-30d", "error", "failed", "all", "all-deep", "fail-deep", "failed-deep"],
)
def test_report_queries_use_their_index(big_database, flt, after, index):
    nodes = plan(big_database, report_query(flt, after, 50))
    assert index in index_names(nodes), nodes
    assert seq_scans(nodes) == []


def test_report_by_run_id_uses_the_unique_index(big_database):
    nodes = plan(big_database, select(reports_table).where(reports_table.c.run_id == "r-77"))
    assert index_names(nodes) == {"idx_costsim_canary_run_id"}


@pytest.mark.parametrize(
    ("flt", "suffix"),
    [
        (ProvenanceFilter(), "created_at_id_idx"),
        (ProvenanceFilter(start_time=NOW - timedelta(days=3), end_time=NOW), "created_at_id_idx"),
        (ProvenanceFilter(tenant_id="tenant-7"), "tenant_id_created_at_id_idx"),
        (ProvenanceFilter(run_id="run-4242"), "run_id_idx"),
        (ProvenanceFilter(input_hash="0" * 64), "input_hash_idx"),
    ],
    ids=["all", "window", "tenant", "run_id", "input_hash"],
)
def test_provenance_queries_use_their_index_in_every_partition(big_database, flt, suffix):
    nodes = plan(big_database, provenance_query(flt, None, 50))
    filled = non_empty_partitions(big_database)
    scans = {n["Relation Name"]: n for n in nodes if n.get("Relation Name") in filled}
    assert scans, nodes  # every partition with rows is read through an index
    for partition, node in scans.items():
        assert node.get("Index Name", "").endswith(suffix), (partition, node)
    assert set(seq_scans(nodes)) & filled == set()


def test_a_window_reads_only_its_partitions(big_database):
    nodes = plan(
        big_database,
        provenance_query(
            ProvenanceFilter(start_time=NOW - timedelta(days=3), end_time=NOW), None, 50
        ),
    )
    touched = {n["Relation Name"] for n in nodes if "Relation Name" in n}
    months = {
        partitions.partition_for(NOW).name,
        partitions.partition_for(NOW - timedelta(days=3)).name,
    }
    assert touched <= months | {partitions.DEFAULT_PARTITION}, touched
