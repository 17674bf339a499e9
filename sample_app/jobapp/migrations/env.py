"""Alembic environment for jobapp.

Where the database comes from, first match wins:
1. ``config.attributes["connection"]``: a caller that owns the transaction passes its connection;
2. the ``sqlalchemy.url`` main option, when a caller sets it programmatically;
3. the ``JOBAPP_DATABASE_URL`` environment variable;
4. the app's default SQLite file.

This module must not import the ``jobapp`` package: deploy tooling runs migrations of several
releases in one process, and each release has its own ``jobapp``.
"""

from __future__ import annotations

import os
from logging.config import fileConfig
from pathlib import Path

from alembic import context
from sqlalchemy import create_engine, pool
from sqlalchemy.engine import Connection, make_url

# Same default as jobapp.settings; duplicated because of the import rule above.
DEFAULT_DATABASE_URL = "sqlite:///./var/jobapp.db"

config = context.config

if config.config_file_name is not None and config.attributes.get("configure_logger", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)


def database_url() -> str:
    configured = config.get_main_option("sqlalchemy.url")
    if configured:
        return configured
    return os.environ.get("JOBAPP_DATABASE_URL") or DEFAULT_DATABASE_URL


def run_migrations(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=None,
        # SQLite can only add columns in place; batch mode rebuilds tables for everything else.
        render_as_batch=connection.dialect.name == "sqlite",
        # One transaction for the whole upgrade: on PostgreSQL a release's migrations apply all
        # together or not at all. (SQLite's ALTERs are not transactional; deploys back it up.)
        transaction_per_migration=False,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_offline() -> None:
    url = database_url()
    context.configure(
        url=url,
        target_metadata=None,
        literal_binds=True,
        render_as_batch=make_url(url).get_backend_name() == "sqlite",
        transaction_per_migration=False,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    supplied = config.attributes.get("connection")
    if supplied is not None:
        run_migrations(supplied)
        return
    url = make_url(database_url())
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, poolclass=pool.NullPool)
    try:
        with engine.connect() as connection:
            run_migrations(connection)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
