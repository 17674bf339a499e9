"""Fixtures for jobapp's tests.

A test that takes ``database_url`` runs twice: on a SQLite file and on PostgreSQL. PostgreSQL
comes from the admin URL in JOBAPP_TEST_POSTGRES_URL (default: the local server); a scratch
database is created once per session and dropped at the end, and each test starts from an
empty schema. When the server cannot be reached the PostgreSQL runs are skipped, with the
reason, unless REQUIRE_POSTGRES=1 makes that a failure.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.pool import NullPool

APP_DIR = Path(__file__).resolve().parents[1]
# The suite tests the jobapp of this tree, however pytest was started.
if str(APP_DIR) not in sys.path:
    sys.path.insert(0, str(APP_DIR))

from jobapp.app import create_app
from jobapp.db import expected_revision
from jobapp.settings import Settings

if TYPE_CHECKING:
    from fastapi.testclient import TestClient

DEFAULT_POSTGRES_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


def pytest_configure(config: pytest.Config) -> None:
    # Declared here too so the suite runs the same inside the app's own repository.
    config.addinivalue_line("markers", "postgres: needs the PostgreSQL server")
    config.addinivalue_line("markers", "slow: starts real servers")
    config.addinivalue_line("filterwarnings", "ignore:Using `httpx` with `starlette.testclient`")


def alembic_config(database_url: str) -> Config:
    config = Config(str(APP_DIR / "alembic.ini"))
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    config.attributes["configure_logger"] = False
    return config


def upgrade(database_url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(database_url), revision)


def subprocess_env(**overrides: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("JOBAPP_", "PROMETHEUS_"))}
    env.pop("PYTHONPATH", None)
    env.update(overrides)
    return env


@pytest.fixture
def migrate() -> Callable[..., None]:
    """``migrate(url, revision="head")``: upgrade in this process, as deploy tooling does."""
    return upgrade


@pytest.fixture
def make_alembic_config() -> Callable[[str], Config]:
    return alembic_config


@pytest.fixture
def run_module() -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run ``python -m MODULE ARGS`` in the app dir, as an operator would, with ``env`` added."""

    def run(module: str, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", module, *args],
            check=False,
            cwd=APP_DIR,
            env=subprocess_env(**env),
            capture_output=True,
            text=True,
            timeout=60,
        )

    return run


@dataclass
class ScratchPostgres:
    """The session's scratch database, handed to each test empty or freshly migrated."""

    url: str
    at_head: bool = False

    def empty(self) -> str:
        engine = create_engine(self.url, poolclass=NullPool)
        with engine.begin() as connection:
            connection.execute(text("DROP SCHEMA public CASCADE"))
            connection.execute(text("CREATE SCHEMA public"))
        engine.dispose()
        self.at_head = False
        return self.url

    def migrated(self) -> str:
        # Emptying the tables is much faster than migrating again, and equivalent as long as
        # the schema is still at head: the revision check catches a test that moved it.
        if not self.at_head or not self._truncate_at_head():
            self.empty()
            upgrade(self.url)
            self.at_head = True
        return self.url

    def _truncate_at_head(self) -> bool:
        engine = create_engine(self.url, poolclass=NullPool)
        try:
            with engine.begin() as connection:
                if MigrationContext.configure(connection).get_current_revision() != expected_revision():
                    return False
                tables = [name for name in inspect(connection).get_table_names() if name != "alembic_version"]
                connection.execute(text(f"TRUNCATE TABLE {', '.join(tables)} RESTART IDENTITY CASCADE"))
            return True
        finally:
            engine.dispose()


@pytest.fixture(scope="session")
def scratch_postgres() -> Iterator[ScratchPostgres]:
    admin_url = make_url(os.environ.get("JOBAPP_TEST_POSTGRES_URL") or DEFAULT_POSTGRES_ADMIN_URL)
    name = f"jobapp_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(
        admin_url, isolation_level="AUTOCOMMIT", poolclass=NullPool, connect_args={"connect_timeout": 5}
    )
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
    except OperationalError as error:
        reason = f"PostgreSQL at {admin_url.render_as_string()} is unreachable: {error.orig}"
        if os.environ.get("REQUIRE_POSTGRES") == "1":
            pytest.fail(f"REQUIRE_POSTGRES=1 but {reason}")
        pytest.skip(reason)
    try:
        yield ScratchPostgres(admin_url.set(database=name).render_as_string(hide_password=False))
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite file migrated to head once; tests get copies."""
    path = tmp_path_factory.mktemp("template") / "jobapp.db"
    upgrade(f"sqlite:///{path}")
    return path


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def backend(request: pytest.FixtureRequest) -> str:
    backend_name: str = request.param
    return backend_name


@pytest.fixture
def database_url(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database, without schema. Do not combine with ``migrated_url`` in one test."""
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'jobapp.db'}"
    scratch: ScratchPostgres = request.getfixturevalue("scratch_postgres")
    return scratch.empty()


@pytest.fixture
def migrated_url(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A database at the head revision with empty tables."""
    if backend == "sqlite":
        path = tmp_path / "jobapp.db"
        shutil.copyfile(request.getfixturevalue("sqlite_template"), path)
        return f"sqlite:///{path}"
    scratch: ScratchPostgres = request.getfixturevalue("scratch_postgres")
    return scratch.migrated()


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def settings(migrated_url: str, data_dir: Path) -> Settings:
    return Settings(database_url=migrated_url, environment="development", data_dir=data_dir)


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    # Imported here, after pytest_configure, so its deprecation notice is filtered.
    from fastapi.testclient import TestClient

    with TestClient(create_app(settings)) as test_client:
        yield test_client


@dataclass(frozen=True)
class Server:
    base_url: str
    master_pid: int
    data_dir: Path
    log_file: Path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def wait_until_serving(base_url: str, process: subprocess.Popen[bytes], log_file: Path) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"gunicorn exited with {process.returncode}:\n{log_file.read_text()}")
        try:
            if httpx.get(f"{base_url}/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.1)
    raise AssertionError(f"gunicorn did not answer within 20 s:\n{log_file.read_text()}")


@contextmanager
def serve(directory: Path) -> Iterator[Server]:
    """jobapp under gunicorn with two workers on a free loopback port, on a migrated SQLite file."""
    data_dir = directory / "data"
    log_file = directory / "gunicorn.log"
    env = subprocess_env(
        JOBAPP_DATABASE_URL=f"sqlite:///{directory / 'jobapp.db'}",
        JOBAPP_DATA_DIR=str(data_dir),
        JOBAPP_BIND=f"127.0.0.1:{free_port()}",
        JOBAPP_WORKERS="2",
        JOBAPP_PID_FILE=str(directory / "gunicorn.pid"),
        JOBAPP_LOG_FILE=str(log_file),
        JOBAPP_CONTROL_SOCKET=str(directory / "gunicorn.ctl"),
    )
    subprocess.run(
        [sys.executable, "-m", "alembic", "upgrade", "head"],
        cwd=APP_DIR,
        env=env,
        check=True,
        capture_output=True,
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "jobapp.app:app"],
        cwd=APP_DIR,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base_url = f"http://{env['JOBAPP_BIND']}"
    try:
        wait_until_serving(base_url, process, log_file)
        yield Server(base_url=base_url, master_pid=process.pid, data_dir=data_dir, log_file=log_file)
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def gunicorn_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Shared by a module's tests; they must leave it serving, out of maintenance."""
    with serve(tmp_path_factory.mktemp("gunicorn")) as server:
        yield server


@pytest.fixture
def own_gunicorn_server(tmp_path: Path) -> Iterator[Server]:
    """A server for one test, which may reload or stop it."""
    with serve(tmp_path) as server:
        yield server
