"""Alembic revisions on real SQLite and PostgreSQL."""

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from costsim_analytics.drivers import schema
from costsim_analytics.drivers.database import make_engine
from costsim_analytics.drivers.models import Base, compared_in_schema_checks
from costsim_analytics.engines.errors import SchemaOutOfDate

TABLES = {"costsim_provenance", "costsim_canary_reports", "costsim_idempotency_keys"}


def test_upgrade_downgrade_upgrade_and_models_match(empty_database_url):
    engine = make_engine(empty_database_url)
    try:
        schema.upgrade(empty_database_url)
        assert set(inspect(engine).get_table_names()) >= TABLES
        schema.downgrade(empty_database_url, "base")
        assert not TABLES & set(inspect(engine).get_table_names())
        schema.upgrade(empty_database_url)
        with engine.connect() as conn:
            diff = compare_metadata(
                MigrationContext.configure(
                    conn,
                    opts={"compare_type": True, "include_object": compared_in_schema_checks},
                ),
                Base.metadata,
            )
        assert diff == []
        schema.check_schema(engine)
    finally:
        engine.dispose()


def test_indexes_follow_the_queries(database_url):
    engine = make_engine(database_url)
    try:
        insp = inspect(engine)
        reports = {ix["name"]: ix for ix in insp.get_indexes("costsim_canary_reports")}
        assert reports["idx_costsim_canary_run_id"]["unique"]
        assert {
            "idx_costsim_canary_timestamp",
            "idx_costsim_canary_status_ts",
            "idx_costsim_canary_failed_ts",
        } <= set(reports)
        assert not {"idx_costsim_canary_status", "idx_costsim_canary_passed"} & set(reports)
        prov = {ix["name"] for ix in insp.get_indexes("costsim_provenance")}
        assert {
            "idx_costsim_prov_run_id",
            "idx_costsim_prov_input_hash",
            "idx_costsim_prov_tenant_created",
            "idx_costsim_prov_created_id",
        } <= prov
    finally:
        engine.dispose()


def test_empty_database_is_reported_behind(empty_database_url):
    engine = make_engine(empty_database_url)
    try:
        with pytest.raises(SchemaOutOfDate, match="costsim-analytics migrate"):
            schema.check_schema(engine)
    finally:
        engine.dispose()
