"""Scale: monthly partitions for provenance, indexes chosen by the query plans.

PostgreSQL: ``costsim_provenance`` becomes ``PARTITION BY RANGE (created_at)`` (the primary key
becomes ``(id, created_at)``, as partitioning requires; ids still come from the same sequence),
with monthly partitions covering the existing rows and the next months, and a default
partition. The rows are copied over in one statement.

Both backends: canary report indexes follow the queries (docs/indexes.md): ``(status,
timestamp, id)`` for status filters and a partial ``(timestamp, id) WHERE passed = false`` for
failure analysis (the form the driver's filter takes); the single-column status and passed
indexes go. Provenance drops the single-column variant index no plan used and extends the
tenant index with ``id``, the keyset tie-breaker.

Revision ID: 0004_scale
Revises: 0003_golden_datasets
Create Date: 2026-11-26
"""

from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0004_scale"
down_revision: str | None = "0003_golden_datasets"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Json = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
Money = sa.Float(precision=53)
Stamp = sa.DateTime(timezone=True)
PROV = "costsim_provenance"
MONTHS_AHEAD = 3


def _columns(id_default: sa.TextClause | None) -> list[sa.Column]:  # type: ignore[type-arg]
    return [
        sa.Column("id", BigId, nullable=False, server_default=id_default),
        sa.Column("run_id", sa.String(256), nullable=False),
        sa.Column("tenant_id", sa.String(256), nullable=False),
        sa.Column("variant_slug", sa.String(16), nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("model_version", sa.String(256), nullable=False),
        sa.Column("adapter_version", sa.String(256), nullable=False),
        sa.Column("commit_sha", sa.String(256), nullable=False),
        sa.Column("input_hash", sa.String(64), nullable=False),
        sa.Column("output_hash", sa.String(64), nullable=False),
        sa.Column("v1_cost", Money, nullable=True),
        sa.Column("v2_cost", Money, nullable=True),
        sa.Column("cost_delta", Money, nullable=True),
        sa.Column("payload", Json, nullable=False),
        sa.Column("runtime_ms", sa.Integer(), nullable=False),
        sa.Column("created_at", Stamp, nullable=False),
    ]


def _month(moment: datetime) -> datetime:
    return datetime(moment.year, moment.month, 1, tzinfo=UTC)


def _next(month: datetime) -> datetime:
    return datetime(month.year + month.month // 12, month.month % 12 + 1, 1, tzinfo=UTC)


def _provenance_indexes() -> None:
    op.create_index("idx_costsim_prov_run_id", PROV, ["run_id"])
    op.create_index("idx_costsim_prov_input_hash", PROV, ["input_hash"])
    op.create_index("idx_costsim_prov_tenant_created", PROV, ["tenant_id", "created_at", "id"])
    op.create_index("idx_costsim_prov_created_id", PROV, ["created_at", "id"])


def _drop_provenance_indexes(names: Sequence[str]) -> None:
    for name in names:
        op.drop_index(name, table_name=PROV)


OLD_PROV_INDEXES = (
    "idx_costsim_prov_run_id",
    "idx_costsim_prov_variant",
    "idx_costsim_prov_input_hash",
    "idx_costsim_prov_tenant_created",
    "idx_costsim_prov_created_id",
)
NEW_PROV_INDEXES = (
    "idx_costsim_prov_run_id",
    "idx_costsim_prov_input_hash",
    "idx_costsim_prov_tenant_created",
    "idx_costsim_prov_created_id",
)


def _partition_postgresql() -> None:
    bind = op.get_bind()
    _drop_provenance_indexes(OLD_PROV_INDEXES)
    op.execute(f"ALTER TABLE {PROV} RENAME TO {PROV}_old")
    op.execute(f"ALTER TABLE {PROV}_old RENAME CONSTRAINT {PROV}_pkey TO {PROV}_old_pkey")
    op.execute(f"ALTER SEQUENCE {PROV}_id_seq OWNED BY NONE")
    op.create_table(
        PROV,
        *_columns(sa.text(f"nextval('{PROV}_id_seq'::regclass)")),
        sa.PrimaryKeyConstraint("id", "created_at", name=f"{PROV}_pkey"),
        postgresql_partition_by="RANGE (created_at)",
    )
    op.execute(f"ALTER SEQUENCE {PROV}_id_seq OWNED BY {PROV}.id")
    oldest = bind.execute(sa.text(f"SELECT min(created_at) FROM {PROV}_old")).scalar()
    now = datetime.now(UTC)
    month = _month(min(oldest, now) if oldest else now)
    last = _month(now)
    for _ in range(MONTHS_AHEAD):
        last = _next(last)
    while month <= last:
        op.execute(
            f'CREATE TABLE "{PROV}_p{month:%Y%m}" PARTITION OF {PROV} '
            f"FOR VALUES FROM ('{month.isoformat()}') TO ('{_next(month).isoformat()}')"
        )
        month = _next(month)
    op.execute(f"CREATE TABLE {PROV}_default PARTITION OF {PROV} DEFAULT")
    op.execute(f"INSERT INTO {PROV} SELECT * FROM {PROV}_old")
    op.drop_table(f"{PROV}_old")
    _provenance_indexes()
    op.execute(f"ANALYZE {PROV}")


def _unpartition_postgresql() -> None:
    _drop_provenance_indexes(NEW_PROV_INDEXES)
    op.execute(f"ALTER TABLE {PROV} RENAME TO {PROV}_parted")
    op.execute(f"ALTER TABLE {PROV}_parted RENAME CONSTRAINT {PROV}_pkey TO {PROV}_parted_pkey")
    op.execute(f"ALTER SEQUENCE {PROV}_id_seq OWNED BY NONE")
    op.create_table(
        PROV,
        *_columns(sa.text(f"nextval('{PROV}_id_seq'::regclass)")),
        sa.PrimaryKeyConstraint("id", name=f"{PROV}_pkey"),
    )
    op.execute(f"ALTER SEQUENCE {PROV}_id_seq OWNED BY {PROV}.id")
    op.execute(f"INSERT INTO {PROV} SELECT * FROM {PROV}_parted")
    op.drop_table(f"{PROV}_parted")  # drops every partition with it


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        _partition_postgresql()
    else:
        op.drop_index("idx_costsim_prov_variant", table_name=PROV)
        op.drop_index("idx_costsim_prov_tenant_created", table_name=PROV)
        op.create_index("idx_costsim_prov_tenant_created", PROV, ["tenant_id", "created_at", "id"])
    op.drop_index("idx_costsim_canary_status", table_name="costsim_canary_reports")
    op.drop_index("idx_costsim_canary_passed", table_name="costsim_canary_reports")
    op.create_index(
        "idx_costsim_canary_status_ts", "costsim_canary_reports", ["status", "timestamp", "id"]
    )
    op.create_index(
        "idx_costsim_canary_failed_ts",
        "costsim_canary_reports",
        ["timestamp", "id"],
        postgresql_where=sa.text("passed = false"),
        sqlite_where=sa.text("passed = 0"),
    )


def downgrade() -> None:
    op.drop_index("idx_costsim_canary_failed_ts", table_name="costsim_canary_reports")
    op.drop_index("idx_costsim_canary_status_ts", table_name="costsim_canary_reports")
    op.create_index("idx_costsim_canary_passed", "costsim_canary_reports", ["passed"])
    op.create_index("idx_costsim_canary_status", "costsim_canary_reports", ["status"])
    if op.get_bind().dialect.name == "postgresql":
        _unpartition_postgresql()
        op.create_index("idx_costsim_prov_run_id", PROV, ["run_id"])
        op.create_index("idx_costsim_prov_input_hash", PROV, ["input_hash"])
        op.create_index("idx_costsim_prov_created_id", PROV, ["created_at", "id"])
    else:
        op.drop_index("idx_costsim_prov_tenant_created", table_name=PROV)
    op.create_index("idx_costsim_prov_variant", PROV, ["variant_slug"])
    op.create_index("idx_costsim_prov_tenant_created", PROV, ["tenant_id", "created_at"])
