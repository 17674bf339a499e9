"""Create the items table

Revision ID: 3f1c2a7b9d10
Revises:
Create Date: 2024-05-02 09:12:44
"""
import sqlalchemy as sa
from alembic import op

revision = "3f1c2a7b9d10"
down_revision = None
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "items",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("title", sa.String(200), nullable=False),
        sa.Column("description", sa.String(1000)),
    )


def downgrade():
    op.drop_table("items")
