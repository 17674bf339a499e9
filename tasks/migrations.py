"""The database schema: which alembic revision a database is at.

The orchestrator reads the `alembic_version` table itself; upgrades and downgrades run in the app's
own interpreter, because a real app's `env.py` imports its models and settings.
"""

from __future__ import annotations

from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import SQLAlchemyError

from deployments.errors import MigrationFailed


def connect(url: str, application_name: str = "deployctl", lock_timeout_ms: int = 5000,
            statement_timeout_ms: int = 600_000, read_only: bool = False) -> Engine:
    """An engine whose PostgreSQL sessions can never wait forever and say who they are.

    `read_only` opens SQLite with mode=ro, so reading a database that does not exist fails
    instead of creating an empty file.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() == "postgresql":
        options = f"-c lock_timeout={lock_timeout_ms} -c statement_timeout={statement_timeout_ms}"
        return create_engine(
            parsed.set(drivername="postgresql+psycopg"),
            connect_args={"application_name": application_name, "options": options, "connect_timeout": 10},
        )
    if read_only and parsed.database and parsed.database != ":memory:":
        return create_engine(
            f"sqlite+pysqlite:///file:{parsed.database}?mode=ro&uri=true", connect_args={"uri": True}
        )
    return create_engine(parsed)


def database_revision(url: str, application_name: str = "deployctl") -> str | None:
    """The alembic revision the database is at; None for a database alembic never touched."""
    engine = connect(url, application_name, read_only=True)
    try:
        with engine.connect() as conn:
            if not inspect(conn).has_table("alembic_version"):
                return None
            rows = conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
    except SQLAlchemyError as exc:
        raise MigrationFailed(
            "check migrations",
            f"cannot read the database revision ({type(exc).__name__}: {str(exc).splitlines()[0]})",
            "check that the database is up and database.url points at it",
        ) from None
    finally:
        engine.dispose()
    if len(rows) > 1:
        raise MigrationFailed(
            "check migrations",
            f"the database has {len(rows)} alembic heads ({', '.join(rows)})",
            "merge the heads in the release before deploying",
        )
    return rows[0] if rows else None
