"""Canonical URL on jobs, unique, so the same posting is never stored twice.

Revision ID: 0003
Revises: 0002
Create Date: 2024-03-15 09:00:00

Rows sharing a source URL exist (an old importer did not dedupe). The oldest row of each group
keeps lower(source_url); the others get lower(source_url) || '#dup-' || id, so no row is lost
and the unique index can be built.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    # The first version of this migration failed on duplicates; on SQLite, which cannot roll
    # back DDL, that run left the column behind.
    columns = {column["name"] for column in sa.inspect(op.get_bind()).get_columns("jobs")}
    if "canonical_url" not in columns:
        op.add_column("jobs", sa.Column("canonical_url", sa.String(500), nullable=True))
    op.execute("UPDATE jobs SET canonical_url = lower(source_url)")
    op.execute(
        """
        UPDATE jobs SET canonical_url = canonical_url || '#dup-' || CAST(id AS VARCHAR(20))
        WHERE id > (SELECT min(oldest.id) FROM jobs AS oldest WHERE oldest.canonical_url = jobs.canonical_url)
        """
    )
    op.create_index("ux_jobs_canonical_url", "jobs", ["canonical_url"], unique=True)


def downgrade() -> None:
    op.drop_index("ux_jobs_canonical_url", table_name="jobs")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("canonical_url")
