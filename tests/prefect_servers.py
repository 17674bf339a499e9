"""Prefect servers for the tests, started in seconds: on a database that is already migrated.

Prefect migrates its database when a server first starts, which is most of its start. So the first
process of a test run that needs a server migrates one template database (under a file lock, so xdist
workers wait for it rather than race), and every server of the run starts on a copy: on PostgreSQL
when it is reachable (`CREATE DATABASE ... TEMPLATE`, and a server that spends less CPU per request
than on SQLite), else a copy of a SQLite file. The run's PostgreSQL databases are dropped when it ends.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url


def shared_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The directory every process of this test run shares (the xdist controller's base temp)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if "PYTEST_XDIST_WORKER" in os.environ else base


def _prefix(shared: Path) -> str:
    return "deploy_tests_prefect_" + hashlib.sha1(str(shared).encode()).hexdigest()[:8]


def _migrate(env: dict[str, str]) -> None:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    subprocess.run([sys.executable, "-m", "prefect", "server", "database", "upgrade", "-y"],
                   env={**clean, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", **env},
                   check=True, capture_output=True, timeout=300)


def server_database(tmp_path_factory: pytest.TempPathFactory, postgres_admin_url: str | None) -> tuple[Path, str | None]:
    """A new PREFECT_HOME, and the URL of a migrated PostgreSQL database for its server (None: the
    home holds a migrated SQLite copy, Prefect's default place)."""
    shared = shared_dir(tmp_path_factory)
    home = tmp_path_factory.mktemp("prefect-home")
    with open(shared / "prefect-template.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # the migration takes seconds; every waiter needs its result
        if postgres_admin_url is None:
            template = shared / "prefect-template" / "prefect.db"
            if not template.exists():
                partial = template.parent / "partial"
                shutil.rmtree(partial, ignore_errors=True)
                partial.mkdir(parents=True)
                _migrate({"PREFECT_HOME": str(partial)})
                os.replace(partial / "prefect.db", template)
            shutil.copyfile(template, home / "prefect.db")
            return home, None
        admin = create_engine(postgres_admin_url, isolation_level="AUTOCOMMIT")
        template_name = _prefix(shared) + "_template"
        server = make_url(postgres_admin_url).set(drivername="postgresql+asyncpg")
        try:
            with admin.connect() as conn:
                if conn.execute(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": template_name}).first() is None:
                    conn.execute(text(f'CREATE DATABASE "{template_name}"'))
                    _migrate({"PREFECT_HOME": str(home),
                              "PREFECT_SERVER_DATABASE_CONNECTION_URL": server.set(database=template_name)
                              .render_as_string(hide_password=False)})
                name = f"{_prefix(shared)}_{uuid.uuid4().hex[:8]}"
                conn.execute(text(f'CREATE DATABASE "{name}" TEMPLATE "{template_name}"'))
        finally:
            admin.dispose()
        return home, server.set(database=name).render_as_string(hide_password=False)


def drop_run_databases(shared: Path, postgres_admin_url: str) -> None:
    """Every PostgreSQL database this run's servers used, the template last."""
    admin = create_engine(postgres_admin_url, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3})
    try:
        with admin.connect() as conn:
            names = conn.execute(text("SELECT datname FROM pg_database WHERE datname LIKE :p"),
                                 {"p": _prefix(shared) + "%"}).scalars().all()
            for name in sorted(names, key=lambda n: n.endswith("_template")):
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


def drain_prefect_queues() -> None:
    """Send the events and logs this process still has queued while their server is up: at exit,
    Prefect would retry sending them to a stopped server for over a minute. From a thread of its own:
    called where an event loop runs, `drain_all` only hands back a coroutine and drains nothing."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    def drain() -> None:
        for queue in (APILogWorker, EventsWorker):
            queue.drain_all(timeout=30)

    thread = threading.Thread(target=drain, name="drain-prefect-queues", daemon=True)
    thread.start()
    thread.join(timeout=75)
