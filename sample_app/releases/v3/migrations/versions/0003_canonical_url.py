"""Canonical URL on jobs, unique, so the same posting is never stored twice.

Revision ID: 0003
Revises: 0002
Create Date: 2024-03-15 09:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("canonical_url", sa.String(500), nullable=True))
    op.execute("UPDATE jobs SET canonical_url = lower(source_url)")
    op.create_index("ux_jobs_canonical_url", "jobs", ["canonical_url"], unique=True)


def downgrade() -> None:
    op.drop_index("ux_jobs_canonical_url", table_name="jobs")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("canonical_url")
