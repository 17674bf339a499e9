"""Shared fixtures: real PostgreSQL when it is there; a loud failure in CI when it is not."""

from __future__ import annotations

import atexit
import logging
import os
import re
import shutil
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError

if TYPE_CHECKING:  # imported only where used: it imports prefect, which must read the environment set below
    from deployctl.stack import Stack

# Prefect logs "Stopping temporary server" while pytest is closing its captured streams; without
# this, logging prints a traceback about the closed file at the very end of every run.
logging.raiseExceptions = False

# The other app's own suite is the release's, run by its deploys on a database of their own
# (tests/e2e/test_other_app.py), never by ours.
collect_ignore_glob = ["other_app/releases/*"]


TESTS = Path(__file__).resolve().parent
# The files that take longest on 2 cores (`--durations`, setup included), longest first.
LONGEST = [
    "e2e/test_fleet.py",
    "ui/test_operator_in_the_browser.py",
    "e2e/test_server_and_worker.py",
    "test_lock.py",
    "faults/test_faults_postgres.py",
    "faults/test_faults.py",
    "e2e/test_other_app.py",
    "flows/test_deploy_on_postgres.py",
    "sample_app/test_release_suites.py",
]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that needs a Prefect server is slow whether or not its module says so: `make test-fast`
    (-m "not slow") must never start one.

    Then the longest files run first (LONGEST, then the other files with slow tests): `make test` hands
    whole files to its workers in this order (--no-loadscope-reorder keeps xdist from reordering them
    by their number of tests), and a long file handed out last runs alone on one core while the others
    idle. The many quick files at the end fill in around the long ones. Within a file the order is
    unchanged; every worker sorts alike, as xdist requires."""
    for item in items:
        if "prefect_server" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)
    heavy = {item.path for item in items if item.get_closest_marker("slow")}
    position = {id(item): index for index, item in enumerate(items)}

    def rank(item: pytest.Item) -> tuple[int, int, int]:
        where = item.path.relative_to(TESTS).as_posix() if item.path.is_relative_to(TESTS) else ""
        first = LONGEST.index(where) if where in LONGEST else len(LONGEST) if item.path in heavy else len(LONGEST) + 1
        return first, 0, position[id(item)]

    items.sort(key=rank)


def _name_the_prefect_server() -> None:
    """The Prefect server of this test process is named while this conftest is imported, before any
    test or conftest imports prefect: prefect reads its settings from the environment once, for
    every thread (an approver's, a lock renewal's) alike. Its PREFECT_HOME is this process's own (an
    xdist worker overrides what it inherited); the server starts when a test first needs it."""
    home = Path(tempfile.mkdtemp(prefix="deploy-tests-prefect-"))
    atexit.register(shutil.rmtree, home, ignore_errors=True)
    (port,) = free_ports(1)
    os.environ.update({"PREFECT_HOME": str(home), "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
                       "PREFECT_SERVER_ANALYTICS_ENABLED": "false"})
    os.environ.pop("PREFECT_API_KEY", None)


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


def prefect_server_database(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str | None]:
    """A PREFECT_HOME and the database of a server started in it (see tests/prefect_servers.py)."""
    from tests.prefect_servers import server_database

    return server_database(tmp_path_factory, POSTGRES_ADMIN_URL if _postgres_available() is None else None)


def pytest_sessionfinish(session: pytest.Session) -> None:
    """The xdist controller (or the only process) drops the run's Prefect databases once all is done."""
    if "PYTEST_XDIST_WORKER" in os.environ or _postgres_available() is not None:
        return
    from tests.prefect_servers import drop_run_databases, shared_dir

    drop_run_databases(shared_dir(session.config._tmp_path_factory), POSTGRES_ADMIN_URL)  # type: ignore[attr-defined]


def _xdist_worker() -> bool:
    return "PYTEST_XDIST_WORKER" in os.environ


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """One real Prefect server for this test process (each xdist worker has its own, so no test sees
    another's runs), on a migrated copy of the run's template database."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    from deployctl.stack import Stack

    api = os.environ["PREFECT_API_URL"]
    home, database = prefect_server_database(tmp_path_factory)
    # The flows of these tests run in this process: no worker, no schedule, no automation, and nothing
    # reads the event feed (task runs are recorded from their events all the same). The server's loops
    # that serve those would only spend a fifth of the module's CPU.
    idle = {f"PREFECT_SERVER_SERVICES_{name}_ENABLED": "false" for name in (
        "FOREMAN", "LATE_RUNS", "SCHEDULER", "REPOSSESSOR", "TRIGGERS", "CANCELLATION_CLEANUP", "CLEANUP_RECONCILER",
        "EVENT_PERSISTER")}
    idle["PREFECT_API_EVENTS_STREAM_OUT_ENABLED"] = "false"
    server = Stack(home=home, port=int(api.rsplit(":", 1)[1].split("/")[0]), database_url=database, extra_env=idle,
                   tied_to_caller=True)
    server.start_server()
    try:
        # Without heartbeats a flow ends up to a second sooner (no thread to join); None cannot be an
        # environment variable, so it is set for this thread, where the tests run their flows.
        with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
            yield server
    finally:
        from tests.prefect_servers import drain_prefect_queues

        drain_prefect_queues()
        server.down(log=lambda *_: None)


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


def _port_block() -> range:
    """This test process's own loopback ports: a block below the kernel's ephemeral range, one block per
    xdist worker. A port from `bind(0)` comes from the ephemeral range, where another worker's `bind(0)`
    or any outgoing connection's local port can take it between the moment it is handed out and the
    moment a server binds it: two workers' sandboxes once got the same production port, and one app
    could never start."""
    try:
        ephemeral = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral = 32768
    first, size = 10000, 1500
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
    start = first + worker % max(1, (ephemeral - first) // size) * size
    return range(start, start + size)


_next_port = [0]
_ports_lock = threading.Lock()


def _bindable(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_ports(n: int) -> list[int]:
    """Loopback ports nobody listens on right now, that no other process of this test run is handed
    (`_port_block`), and that this process handed out least recently: it goes round its block."""
    block = _port_block()
    found: list[int] = []
    with _ports_lock:
        for _ in range(len(block)):
            port = block[_next_port[0] % len(block)]
            _next_port[0] += 1
            if _bindable(port):
                found.append(port)
                if len(found) == n:
                    return found
    raise RuntimeError(f"no {n} free loopback ports left in {block}")


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


_name_the_prefect_server()
