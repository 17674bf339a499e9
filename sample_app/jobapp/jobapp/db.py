"""Engine and session setup, and the two revisions /api/health compares."""

from __future__ import annotations

from pathlib import Path

from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

APP_DIR = Path(__file__).resolve().parent.parent
ALEMBIC_INI = APP_DIR / "alembic.ini"


def make_engine(database_url: str) -> Engine:
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        if url.database not in (None, "", ":memory:"):
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        # Two workers share the file; wait for the other's write lock instead of failing at once.
        return create_engine(url, connect_args={"timeout": 15})
    connect_args = {}
    if url.get_backend_name() == "postgresql" and "connect_timeout" not in url.query:
        # Bounded, so /api/health reports an unreachable server instead of hanging.
        connect_args["connect_timeout"] = 5
    return create_engine(url, pool_pre_ping=True, connect_args=connect_args)


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def database_revision(engine: Engine) -> str | None:
    """Run ``SELECT 1`` and return the revision stamped in the database (None if unmigrated)."""
    with engine.connect() as connection:
        connection.execute(text("SELECT 1"))
        return MigrationContext.configure(connection).get_current_revision()


def expected_revision() -> str | None:
    """The head of the migration scripts shipped with this code."""
    return ScriptDirectory.from_config(Config(str(ALEMBIC_INI))).get_current_head()
