"""Database sessions: every engine the orchestrator opens comes from here.

A PostgreSQL session never waits forever (`lock_timeout`, `statement_timeout`, a connect timeout)
and says who it is (`application_name=deploy-<run>`), so the lock watch and the orphan sweep find
it; a SQLite database read for a check is opened read-only, so a wrong path fails instead of
creating an empty file.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from urllib.parse import quote

from sqlalchemy import create_engine
from sqlalchemy.engine import Engine, make_url


def session_name(suffix: str = "") -> str:
    """`deploy-<first 8 of the flow run id>` inside a run, `deploy-cli` outside one; the orphan sweep
    and the lock watch find our sessions by this prefix."""
    from prefect.runtime import flow_run

    run = flow_run.id
    return f"deploy-{str(run)[:8] if run else 'cli'}" + (f"-{suffix}" if suffix else "")


def connect(url: str, application_name: str | None = None, lock_timeout_ms: int = 5000,
            statement_timeout_ms: int = 600_000, read_only: bool = False) -> Engine:
    """An engine whose PostgreSQL sessions can never wait forever and say who they are.

    `read_only` opens SQLite with mode=ro, so reading a database that does not exist fails
    instead of creating an empty file.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() == "postgresql":
        application_name = application_name or session_name()
        options = f"-c lock_timeout={lock_timeout_ms} -c statement_timeout={statement_timeout_ms}"
        return create_engine(
            parsed.set(drivername="postgresql+psycopg"),
            connect_args={"application_name": application_name, "options": options, "connect_timeout": 10},
        )
    if read_only and parsed.database and parsed.database != ":memory:":
        # Past SQLAlchemy's URL parser, which would unquote the path again.
        uri = read_only_uri(parsed.database)
        return create_engine("sqlite+pysqlite://", creator=lambda: sqlite3.connect(uri, uri=True))
    return create_engine(parsed)


def read_only_uri(path: str | Path) -> str:
    """A SQLite URI opening `path` read-only. Quoted: a '#' or '?' in the path would otherwise end the
    URI early and drop mode=ro, creating and reading another, empty file."""
    return f"file:{quote(str(path))}?mode=ro"
