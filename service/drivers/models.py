"""SQLAlchemy tables. Alembic revisions in ``migrations/`` create exactly these.

Drivers query the tables with SQLAlchemy Core (``Model.__table__``); ORM instances never
leave this package.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    text,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

# A 64-bit id on PostgreSQL; on SQLite only INTEGER PRIMARY KEY is the auto-incrementing rowid.
BigId = BigInteger().with_variant(Integer(), "sqlite")
# JSONB on PostgreSQL (binary, indexable); JSON text elsewhere.
Json = JSON().with_variant(postgresql.JSONB(), "postgresql")


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp stored in UTC and always returned timezone-aware.

    PostgreSQL stores ``timestamptz``; SQLite has no time zones, so values are stored as naive
    UTC text (which sorts correctly) and the zone is put back on the way out.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Convert to UTC (naive UTC on SQLite); reject naive input."""
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetimes are ambiguous; pass a timezone-aware value")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Return an aware UTC datetime."""
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    """Declarative base of every table."""


class Provenance(Base):
    """One simulation's provenance (``costsim_provenance``)."""

    __tablename__ = "costsim_provenance"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(String(256))
    tenant_id: Mapped[str] = mapped_column(String(256))
    variant_slug: Mapped[str] = mapped_column(String(16))
    source: Mapped[str] = mapped_column(String(16))
    model_version: Mapped[str] = mapped_column(String(256))
    adapter_version: Mapped[str] = mapped_column(String(256))
    commit_sha: Mapped[str] = mapped_column(String(256))
    input_hash: Mapped[str] = mapped_column(String(64))
    output_hash: Mapped[str] = mapped_column(String(64))
    v1_cost: Mapped[float | None] = mapped_column(Float(precision=53))
    v2_cost: Mapped[float | None] = mapped_column(Float(precision=53))
    cost_delta: Mapped[float | None] = mapped_column(Float(precision=53))
    payload: Mapped[dict[str, Any]] = mapped_column(Json)
    runtime_ms: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())

    # PostgreSQL partitions the table by month (revision 0004, drivers/partitions.py) and its
    # primary key is (id, created_at), since a partition key must be part of it. SQLAlchemy
    # keeps id alone as the key here: on SQLite only a one-column INTEGER key auto-increments.
    __table_args__ = (
        Index("idx_costsim_prov_run_id", "run_id"),
        Index("idx_costsim_prov_input_hash", "input_hash"),
        # (..., id): every query sorts by (created_at, id) for keyset paging.
        Index("idx_costsim_prov_tenant_created", "tenant_id", "created_at", "id"),
        Index("idx_costsim_prov_created_id", "created_at", "id"),
        {"postgresql_partition_by": "RANGE (created_at)"},
    )


class CanaryReportRow(Base):
    """One canary run's report (``costsim_canary_reports``, the predecessor's migration 121)."""

    __tablename__ = "costsim_canary_reports"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(String(256))
    timestamp: Mapped[datetime] = mapped_column(UTCDateTime())
    status: Mapped[str] = mapped_column(String(16))
    total_samples: Mapped[int] = mapped_column(Integer)
    matching_samples: Mapped[int] = mapped_column(Integer)
    minor_drift_samples: Mapped[int] = mapped_column(Integer)
    major_drift_samples: Mapped[int] = mapped_column(Integer)
    median_cost_diff: Mapped[float | None] = mapped_column(Float(precision=53))
    p90_cost_diff: Mapped[float | None] = mapped_column(Float(precision=53))
    kl_divergence: Mapped[float | None] = mapped_column(Float(precision=53))
    outlier_count: Mapped[int] = mapped_column(Integer)
    passed: Mapped[bool] = mapped_column(Boolean)
    failure_reasons_json: Mapped[list[str]] = mapped_column(Json)
    artifact_paths_json: Mapped[list[str]] = mapped_column(Json)
    golden_comparison_json: Mapped[dict[str, Any] | None] = mapped_column(Json)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    # Added by revision 0002: the models compared and the report's structured details
    # (reasons as data, statistics, artifact checksums, sample provenance).
    baseline_model: Mapped[str] = mapped_column(String(64), server_default="")
    candidate_model: Mapped[str] = mapped_column(String(64), server_default="")
    details_json: Mapped[dict[str, Any] | None] = mapped_column(Json)

    __table_args__ = (
        Index("idx_costsim_canary_run_id", "run_id", unique=True),
        # The indexes follow the queries QueryCanaryReports issues (docs/indexes.md):
        # (timestamp, id) is its sort key; status filters walk (status, timestamp, id);
        # failure analysis (passed = false) walks a partial index of the failures only.
        Index("idx_costsim_canary_timestamp", "timestamp", "id"),
        Index("idx_costsim_canary_status_ts", "status", "timestamp", "id"),
        Index(
            "idx_costsim_canary_failed_ts",
            "timestamp",
            "id",
            postgresql_where=text("passed = false"),
            sqlite_where=text("passed = 0"),
        ),
    )


class IdempotencyKey(Base):
    """A request_id already answered, with the request's digest and the answer."""

    __tablename__ = "costsim_idempotency_keys"

    operation: Mapped[str] = mapped_column(String(64), primary_key=True)
    request_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    request_hash: Mapped[str] = mapped_column(String(64))
    response_json: Mapped[dict[str, Any] | None] = mapped_column(Json)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())

    __table_args__ = (Index("idx_costsim_idem_created", "created_at"),)


# Core handles on the tables (declarative types __table__ as a plain FromClause).
def compared_in_schema_checks(
    obj: object, name: str | None, type_: str, reflected: bool, compare_to: object
) -> bool:
    """Alembic ``include_object``: leave out the monthly partitions of ``costsim_provenance``.

    They are created at run time (drivers/partitions.py), not declared as models.
    """
    table = getattr(obj, "table", obj) if type_ == "index" else obj
    table_name = getattr(table, "name", name) or ""
    return not (reflected and table_name.startswith("costsim_provenance_"))


provenance_table = cast(Table, Provenance.__table__)
reports_table = cast(Table, CanaryReportRow.__table__)
idempotency_table = cast(Table, IdempotencyKey.__table__)


class GoldenDatasetRow(Base):
    """One immutable version of a golden dataset (``costsim_golden_datasets``, revision 0003)."""

    __tablename__ = "costsim_golden_datasets"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(128))
    version: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))
    description: Mapped[str] = mapped_column(String(1024))
    # "import", or "promote:<run_id>".
    source: Mapped[str] = mapped_column(String(300))
    sample_count: Mapped[int] = mapped_column(Integer)
    active: Mapped[bool] = mapped_column(Boolean)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())

    __table_args__ = (
        Index("uq_costsim_golden_name_version", "name", "version", unique=True),
        Index("uq_costsim_golden_name_sha256", "name", "sha256", unique=True),
        # At most one active version per name: a partial unique index (both backends have them).
        Index(
            "uq_costsim_golden_active_name",
            "name",
            unique=True,
            postgresql_where=text("active"),
            sqlite_where=text("active"),
        ),
    )


class GoldenSampleRow(Base):
    """One sample of a golden dataset version (``costsim_golden_samples``)."""

    __tablename__ = "costsim_golden_samples"

    dataset_id: Mapped[int] = mapped_column(
        BigId,
        ForeignKey(
            "costsim_golden_datasets.id",
            name="fk_costsim_golden_samples_dataset",
            ondelete="CASCADE",
        ),
        primary_key=True,
        autoincrement=False,
    )
    sample_id: Mapped[str] = mapped_column(String(256), primary_key=True)
    plan_input: Mapped[dict[str, Any]] = mapped_column(Json)
    expected_cost_cents: Mapped[float] = mapped_column(Float(precision=53))
    expected_feasible: Mapped[bool] = mapped_column(Boolean)
    expected_duration_ms: Mapped[float | None] = mapped_column(Float(precision=53))


golden_datasets_table = cast(Table, GoldenDatasetRow.__table__)
golden_samples_table = cast(Table, GoldenSampleRow.__table__)
