"""Canary reports: compared models and structured details.

Revision ID: 0002_canary_details
Revises: 0001_initial
Create Date: 2026-11-26
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002_canary_details"
down_revision: str | None = "0001_initial"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

Json = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("costsim_canary_reports") as batch:
        batch.add_column(
            sa.Column("baseline_model", sa.String(64), server_default="", nullable=False)
        )
        batch.add_column(
            sa.Column("candidate_model", sa.String(64), server_default="", nullable=False)
        )
        batch.add_column(sa.Column("details_json", Json, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("costsim_canary_reports") as batch:
        batch.drop_column("details_json")
        batch.drop_column("candidate_model")
        batch.drop_column("baseline_model")
