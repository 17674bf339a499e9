"""The app's PostgreSQL role and one database per environment, made for a test and dropped after it.

The role has a password, as an app's role would: the local server trusts loopback connections and
ignores it, but every URL the tool is given carries it, so a test can look for it where it must
never be written (logs, artifacts, the ledger, backups' manifests).
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL, make_url


@dataclass(frozen=True)
class AppDatabases:
    role: str
    password: str
    urls: dict[str, URL]  # environment -> its database, as the app's role reaches it

    def url(self, environment: str) -> str:
        """The URL an operator writes in app.env."""
        return self.urls[environment].set(drivername="postgresql").render_as_string(hide_password=False)

    def variables(self, environment: str) -> dict[str, str]:
        """What the app reads to reach its database, as its operator exports them by hand."""
        url = self.urls[environment]
        return {"POSTGRES_SERVER": url.host or "", "POSTGRES_PORT": str(url.port or 5432),
                "POSTGRES_USER": url.username or "", "POSTGRES_PASSWORD": self.password,
                "POSTGRES_DB": url.database or ""}

    def columns(self, environment: str, table: str) -> list[str]:
        engine = create_engine(self.urls[environment])
        try:
            with engine.connect() as conn:
                query = text("SELECT column_name FROM information_schema.columns WHERE table_name = :table "
                             "ORDER BY ordinal_position")
                return list(conn.execute(query, {"table": table}).scalars())
        finally:
            engine.dispose()


@contextmanager
def app_databases(admin_url: str, environments: tuple[str, ...],
                  prefix: str = "inventory") -> Iterator[AppDatabases]:
    """A login role allowed to create databases (a backup is proven by restoring it into a scratch one)
    owning an empty database per environment; all dropped afterwards, with any database the role made."""
    tag = uuid.uuid4().hex[:8]
    role, password = f"{prefix}_{tag}", f"pw-{secrets.token_hex(12)}"
    server = make_url(admin_url)
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    urls = {env: server.set(drivername="postgresql+psycopg", username=role, password=password,
                            database=f"{prefix}_{env}_{tag}") for env in environments}
    try:
        with admin.connect() as conn:
            conn.execute(text(f"CREATE ROLE \"{role}\" LOGIN CREATEDB PASSWORD '{password}'"))
            for url in urls.values():
                conn.execute(text(f'CREATE DATABASE "{url.database}" OWNER "{role}"'))
        yield AppDatabases(role, password, urls)
    finally:
        with admin.connect() as conn:
            owned = conn.execute(text("SELECT datname FROM pg_database d JOIN pg_roles r ON r.oid = d.datdba "
                                      "WHERE r.rolname = :role"), {"role": role}).scalars().all()
            for name in owned:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            conn.execute(text(f'DROP ROLE IF EXISTS "{role}"'))
        admin.dispose()
