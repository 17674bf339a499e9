"""The ledger's schema as Alembic migrations, applied by the ledger itself when it is opened.

`upgrade(connection)` brings a ledger to the newest revision on the caller's connection and inside
its transaction, which it first makes the only one that may change the schema: two processes opening
the same new ledger at once both succeed, the second finding the first's work done.

A ledger made before it had migrations has its tables but no version table. The code of that time
added, on every open, the columns its models had gained since the file was made. Such a ledger gets
what it still lacks of the baseline revision's tables, columns and indexes, the way that code did it,
is stamped at the baseline, and is then upgraded like any other.

A new revision goes in versions/ (`alembic.command.revision` on a `config(connection)` writes one)
and HEAD names it; a revision already released is never edited.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import sqlalchemy as sa
from sqlalchemy.engine import Connection

if TYPE_CHECKING:
    from alembic.config import Config

# Not Alembic's default name: a ledger kept in a team's own database must not take over the version
# table of that database's own migrations.
VERSION_TABLE = "ledger_alembic_version"
BASELINE = "0001"
# The newest revision in versions/; a test holds it to Alembic's own answer. A ledger already there is
# opened without importing Alembic, whose import alone costs more than all of a deploy's ledger writes.
HEAD = "0002"
# PostgreSQL's advisory lock for changing the ledger's schema; any number nothing else uses.
_SCHEMA_LOCK = 0x1ED6E5


def config(connection: Connection) -> Config:
    """Alembic's configuration for this ledger, built here: no alembic.ini for anyone to keep."""
    from alembic.config import Config

    alembic_config = Config()
    alembic_config.set_main_option("script_location", str(Path(__file__).parent))
    alembic_config.attributes["connection"] = connection
    return alembic_config


def upgrade(connection: Connection) -> None:
    if _current(connection) == HEAD:
        return
    _migrate(connection)


def _current(connection: Connection) -> str | None:
    if not sa.inspect(connection).has_table(VERSION_TABLE):
        return None
    return connection.scalar(sa.text(f"SELECT version_num FROM {VERSION_TABLE}"))


def _lock_the_schema(connection: Connection) -> None:
    if connection.dialect.name == "sqlite":
        # pysqlite begins a transaction only before the first write, and SQLite's plain BEGIN takes no
        # lock: IMMEDIATE takes the write lock before the version is read again, so a second opener
        # waits (busy_timeout) and then reads the first one's committed schema.
        connection.exec_driver_sql("BEGIN IMMEDIATE")
    elif connection.dialect.name == "postgresql":
        connection.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _SCHEMA_LOCK})


def _migrate(connection: Connection) -> None:
    from alembic import command
    from alembic.script import ScriptDirectory

    settings = config(connection)
    baseline = ScriptDirectory.from_config(settings).get_revision(BASELINE).module.metadata
    _lock_the_schema(connection)
    if _made_before_migrations(connection, baseline):
        _bring_to_baseline(connection, baseline)
        command.stamp(settings, BASELINE)
    command.upgrade(settings, "head")


def _made_before_migrations(connection: Connection, baseline: sa.MetaData) -> bool:
    tables = set(sa.inspect(connection).get_table_names())
    return VERSION_TABLE not in tables and not tables.isdisjoint(baseline.tables)


def _bring_to_baseline(connection: Connection, baseline: sa.MetaData) -> None:
    from alembic.migration import MigrationContext
    from alembic.operations import Operations

    baseline.create_all(connection)  # only the tables it lacks, with their indexes
    present = sa.inspect(connection)
    operations = Operations(MigrationContext.configure(connection))
    for table in baseline.sorted_tables:
        columns = {column["name"] for column in present.get_columns(table.name)}
        for column in table.columns:
            if column.name not in columns:
                # Nullable, as the older code added it: the rows already there have no value for it.
                operations.add_column(table.name, sa.Column(column.name, column.type, nullable=True))
        for index in table.indexes:
            index.create(connection, checkfirst=True)
