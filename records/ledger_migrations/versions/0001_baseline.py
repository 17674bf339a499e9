"""The ledger as it was when it gained migrations: releases, and the steps of each.

Revision ID: 0001
Revises:
Create Date: 2026-12-04 09:00:00

The tables are written out here rather than taken from records.ledger's models, so that this revision
keeps meaning what it meant once the models move on. A ledger made before the ledger had migrations is
brought to this revision from these same tables (records.ledger_migrations.upgrade).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None

metadata = sa.MetaData()

sa.Table(
    "releases",
    metadata,
    sa.Column("id", sa.Integer(), primary_key=True),
    sa.Column("environment", sa.String(40), nullable=False, index=True),
    sa.Column("flow_run_id", sa.String(64), index=True),
    sa.Column("flow_run_name", sa.String(200)),
    sa.Column("ref", sa.String(200), nullable=False),
    sa.Column("reason", sa.Text(), nullable=False),
    sa.Column("dry_run", sa.Boolean(), nullable=False),
    sa.Column("target_sha", sa.String(40)),
    sa.Column("previous_sha", sa.String(40)),
    sa.Column("commit_time", sa.DateTime(timezone=True)),
    sa.Column("db_revision_before", sa.String(64)),
    sa.Column("db_revision_after", sa.String(64)),
    sa.Column("backup_tag", sa.String(80)),
    sa.Column("backup_manifest", sa.JSON()),
    sa.Column("approvals", sa.JSON(), nullable=False),
    sa.Column("phase", sa.String(40), nullable=False),
    sa.Column("code_changed", sa.Boolean(), nullable=False),
    sa.Column("migration_started", sa.Boolean(), nullable=False),
    sa.Column("outcome", sa.String(20), nullable=False, index=True),
    sa.Column("failed_step", sa.String(80)),
    sa.Column("error", sa.Text()),
    sa.Column("timings", sa.JSON(), nullable=False),
    sa.Column("baseline", sa.JSON()),
    sa.Column("migrations", sa.JSON(), nullable=False),
    sa.Column("checks", sa.JSON(), nullable=False),
    sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("finished_at", sa.DateTime(timezone=True)),
    sa.Column("restored_at", sa.DateTime(timezone=True)),
    sa.Column("lock_acquired_at", sa.DateTime(timezone=True)),
    sa.Column("lock_lease_id", sa.String(36)),
    sa.Column("rollback_of", sa.Integer()),
    sa.Column("watch", sa.JSON()),
)

sa.Table(
    "steps",
    metadata,
    sa.Column("id", sa.Integer(), primary_key=True),
    sa.Column("release_id", sa.Integer(), nullable=False, index=True),
    sa.Column("name", sa.String(80), nullable=False),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("detail", sa.Text(), nullable=False),
    sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("finished_at", sa.DateTime(timezone=True)),
)


def upgrade() -> None:
    metadata.create_all(op.get_bind(), checkfirst=False)


def downgrade() -> None:
    metadata.drop_all(op.get_bind(), checkfirst=False)
