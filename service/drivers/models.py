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
    Index,
    Integer,
    String,
    Table,
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

    __table_args__ = (
        Index("idx_costsim_prov_run_id", "run_id"),
        Index("idx_costsim_prov_variant", "variant_slug"),
        Index("idx_costsim_prov_input_hash", "input_hash"),
        Index("idx_costsim_prov_tenant_created", "tenant_id", "created_at"),
        # (created_at, id) rather than created_at alone: the keyset sort key of every query.
        Index("idx_costsim_prov_created_id", "created_at", "id"),
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
        # (timestamp, id): the keyset sort key of QueryCanaryReports.
        Index("idx_costsim_canary_timestamp", "timestamp", "id"),
        Index("idx_costsim_canary_status", "status"),
        Index("idx_costsim_canary_passed", "passed"),
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
provenance_table = cast(Table, Provenance.__table__)
reports_table = cast(Table, CanaryReportRow.__table__)
idempotency_table = cast(Table, IdempotencyKey.__table__)
