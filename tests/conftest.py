"""Shared fixtures: real PostgreSQL when it is there; a loud failure in CI when it is not."""

from __future__ import annotations

import logging
import os
import re
import socket
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError

# Prefect logs "Stopping temporary server" while pytest is closing its captured streams; without
# this, logging prints a traceback about the closed file at the very end of every run.
logging.raiseExceptions = False

POSTGRES_ADMIN_URL = os.environ.get(
    "DEPLOY_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)


def _postgres_available() -> str | None:
    engine = create_engine(POSTGRES_ADMIN_URL, connect_args={"connect_timeout": 3})
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        return None
    except OperationalError as exc:
        return str(exc).splitlines()[0]
    finally:
        engine.dispose()


@pytest.fixture(scope="session")
def prefect_server() -> Iterator[None]:
    """One Prefect test server for the whole session: harnesses must never nest."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        with prefect_test_harness(server_startup_timeout=90):
            yield


@pytest.fixture(scope="session")
def postgres_admin_url() -> str:
    problem = _postgres_available()
    if problem is not None:
        if os.environ.get("REQUIRE_POSTGRES") == "1":
            pytest.fail(f"REQUIRE_POSTGRES=1 but PostgreSQL at {POSTGRES_ADMIN_URL} is unreachable: {problem}")
        pytest.skip(f"PostgreSQL is not reachable at {POSTGRES_ADMIN_URL} ({problem}); set REQUIRE_POSTGRES=1 to fail instead")
    return POSTGRES_ADMIN_URL


@contextmanager
def scratch_database(admin_url: str, prefix: str) -> Iterator[str]:
    """A fresh, empty database named `prefix_<random>`; dropped afterwards, sessions and all."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield admin_url.rsplit("/", 1)[0] + "/" + name
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def postgres_database(postgres_admin_url: str) -> Iterator[str]:
    """A fresh, empty database; dropped afterwards."""
    with scratch_database(postgres_admin_url, "deploy_test") as url:
        yield url


def free_ports(n: int) -> list[int]:
    """Loopback ports nobody listens on right now."""
    sockets = [socket.socket() for _ in range(n)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


def without_canary(environment_file: str) -> str:
    """An environment file's text without its [service.canary] table: a bad release then takes
    traffic, and is caught by phase 3 and rolled back from there."""
    edited = re.sub(r"^\[service\.canary\]\n(?:#.*\n)*env = .*\n", "", environment_file, flags=re.M)
    assert edited != environment_file, "the environment file has no [service.canary] table to remove"
    return edited


# tests/ui leaves a screenshot of each stage there. The line is printed here, in the root conftest,
# because with pytest-xdist only the controlling process writes the summary, and it loads no other.
UI_SCREENSHOTS = Path(__file__).resolve().parent.parent / "test-artifacts" / "ui"
_session_started = time.time()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    shots = [p for p in UI_SCREENSHOTS.glob("*.png") if p.stat().st_mtime >= _session_started]
    if shots:
        terminalreporter.write_line(f"UI screenshots of this run ({len(shots)}, one per stage): {UI_SCREENSHOTS}")
