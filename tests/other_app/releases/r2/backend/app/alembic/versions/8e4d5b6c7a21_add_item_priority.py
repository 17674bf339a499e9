"""Add a priority to items

Revision ID: 8e4d5b6c7a21
Revises: 3f1c2a7b9d10
Create Date: 2024-05-09 14:03:17
"""
import sqlalchemy as sa
from alembic import op

revision = "8e4d5b6c7a21"
down_revision = "3f1c2a7b9d10"
branch_labels = None
depends_on = None


def upgrade():
    # With a server default, the release before this one keeps inserting rows until it is replaced.
    op.add_column("items", sa.Column("priority", sa.Integer(), nullable=False, server_default="0"))


def downgrade():
    op.drop_column("items", "priority")
