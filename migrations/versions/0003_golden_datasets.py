"""Golden datasets: immutable versions and their samples.

Revision ID: 0003_golden_datasets
Revises: 0002_canary_details
Create Date: 2026-11-26
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003_golden_datasets"
down_revision: str | None = "0002_canary_details"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Json = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
Money = sa.Float(precision=53)
Stamp = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "costsim_golden_datasets",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("description", sa.String(1024), nullable=False),
        sa.Column("source", sa.String(300), nullable=False),
        sa.Column("sample_count", sa.Integer(), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("created_at", Stamp, nullable=False),
    )
    op.create_index(
        "uq_costsim_golden_name_version",
        "costsim_golden_datasets",
        ["name", "version"],
        unique=True,
    )
    op.create_index(
        "uq_costsim_golden_name_sha256", "costsim_golden_datasets", ["name", "sha256"], unique=True
    )
    # One active version per name. A partial unique index: PostgreSQL and SQLite both have them.
    op.create_index(
        "uq_costsim_golden_active_name",
        "costsim_golden_datasets",
        ["name"],
        unique=True,
        postgresql_where=sa.text("active"),
        sqlite_where=sa.text("active"),
    )
    op.create_table(
        "costsim_golden_samples",
        sa.Column("dataset_id", BigId, nullable=False),
        sa.Column("sample_id", sa.String(256), nullable=False),
        sa.Column("plan_input", Json, nullable=False),
        sa.Column("expected_cost_cents", Money, nullable=False),
        sa.Column("expected_feasible", sa.Boolean(), nullable=False),
        sa.Column("expected_duration_ms", Money, nullable=True),
        sa.PrimaryKeyConstraint("dataset_id", "sample_id"),
        sa.ForeignKeyConstraint(
            ["dataset_id"],
            ["costsim_golden_datasets.id"],
            name="fk_costsim_golden_samples_dataset",
            ondelete="CASCADE",
        ),
    )


def downgrade() -> None:
    op.drop_table("costsim_golden_samples")
    op.drop_index("uq_costsim_golden_active_name", table_name="costsim_golden_datasets")
    op.drop_index("uq_costsim_golden_name_sha256", table_name="costsim_golden_datasets")
    op.drop_index("uq_costsim_golden_name_version", table_name="costsim_golden_datasets")
    op.drop_table("costsim_golden_datasets")
