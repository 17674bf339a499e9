"""Salary range on jobs, and an index on jobs.company.

Revision ID: 0002
Revises: 0001
Create Date: 2024-03-08 09:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    # Nullable, so the code still running the previous release can keep inserting jobs.
    op.add_column("jobs", sa.Column("salary_min", sa.Integer(), nullable=True))
    op.add_column("jobs", sa.Column("salary_max", sa.Integer(), nullable=True))
    op.create_index("ix_jobs_company", "jobs", ["company"])


def downgrade() -> None:
    op.drop_index("ix_jobs_company", table_name="jobs")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("salary_max")
        batch.drop_column("salary_min")
