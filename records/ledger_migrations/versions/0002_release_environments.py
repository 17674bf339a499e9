"""Each release's Python environment: the one live before the deploy and the one it brought.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-04 10:00:00

With [dependencies] every release runs in an environment of its own (tasks/dependencies.py); a
rollback returns to exactly the environment recorded here as `environment_before`.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("releases") as table:
        table.add_column(sa.Column("environment_before", sa.String(64)))
        table.add_column(sa.Column("environment_after", sa.String(64)))


def downgrade() -> None:
    with op.batch_alter_table("releases") as table:
        table.drop_column("environment_after")
        table.drop_column("environment_before")
