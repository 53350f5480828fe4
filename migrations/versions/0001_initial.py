"""Provenance, canary reports and idempotency keys.

Revision ID: 0001_initial
Revises:
Create Date: 2026-11-26
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001_initial"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Json = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
Money = sa.Float(precision=53)
Stamp = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "costsim_provenance",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
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
    )
    op.create_index("idx_costsim_prov_run_id", "costsim_provenance", ["run_id"])
    op.create_index("idx_costsim_prov_variant", "costsim_provenance", ["variant_slug"])
    op.create_index("idx_costsim_prov_input_hash", "costsim_provenance", ["input_hash"])
    op.create_index(
        "idx_costsim_prov_tenant_created", "costsim_provenance", ["tenant_id", "created_at"]
    )
    op.create_index("idx_costsim_prov_created_id", "costsim_provenance", ["created_at", "id"])

    op.create_table(
        "costsim_canary_reports",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("run_id", sa.String(256), nullable=False),
        sa.Column("timestamp", Stamp, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("total_samples", sa.Integer(), nullable=False),
        sa.Column("matching_samples", sa.Integer(), nullable=False),
        sa.Column("minor_drift_samples", sa.Integer(), nullable=False),
        sa.Column("major_drift_samples", sa.Integer(), nullable=False),
        sa.Column("median_cost_diff", Money, nullable=True),
        sa.Column("p90_cost_diff", Money, nullable=True),
        sa.Column("kl_divergence", Money, nullable=True),
        sa.Column("outlier_count", sa.Integer(), nullable=False),
        sa.Column("passed", sa.Boolean(), nullable=False),
        sa.Column("failure_reasons_json", Json, nullable=False),
        sa.Column("artifact_paths_json", Json, nullable=False),
        sa.Column("golden_comparison_json", Json, nullable=True),
        sa.Column("created_at", Stamp, nullable=False),
    )
    op.create_index("idx_costsim_canary_run_id", "costsim_canary_reports", ["run_id"], unique=True)
    op.create_index("idx_costsim_canary_timestamp", "costsim_canary_reports", ["timestamp", "id"])
    op.create_index("idx_costsim_canary_status", "costsim_canary_reports", ["status"])
    op.create_index("idx_costsim_canary_passed", "costsim_canary_reports", ["passed"])

    op.create_table(
        "costsim_idempotency_keys",
        sa.Column("operation", sa.String(64), primary_key=True),
        sa.Column("request_id", sa.String(128), primary_key=True),
        sa.Column("request_hash", sa.String(64), nullable=False),
        sa.Column("response_json", Json, nullable=True),
        sa.Column("created_at", Stamp, nullable=False),
    )
    op.create_index("idx_costsim_idem_created", "costsim_idempotency_keys", ["created_at"])


def downgrade() -> None:
    op.drop_table("costsim_idempotency_keys")
    op.drop_table("costsim_canary_reports")
    op.drop_table("costsim_provenance")
