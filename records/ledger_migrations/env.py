"""The ledger's Alembic environment. It runs only on the connection its caller passes in
(`config.attributes["connection"]`, see records.ledger_migrations.upgrade), inside that caller's
transaction: the ledger's engine is the only one, and the caller decides when the schema commits.
"""

from __future__ import annotations

from alembic import context

from records.ledger import Base
from records.ledger_migrations import VERSION_TABLE

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    # What autogenerate compares a new revision against.
    target_metadata=Base.metadata,
    version_table=VERSION_TABLE,
    # SQLite alters little in place; batch mode rebuilds a table for the rest.
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
