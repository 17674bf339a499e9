"""Working copies of jobapp's origin, moved between releases the way a deploy moves its target.

Releases share the package name ``jobapp``, so no release is ever imported by the tests: each
one runs in a subprocess started in its own checkout. Alembic runs in the test process, which
is safe because a release's migration environment imports nothing from its app.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, inspect, text
from sqlalchemy.pool import NullPool

from tests.conftest import free_ports

PROBE = Path(__file__).resolve().parent / "app_probe.py"
# No keep-alive: a new connection per request lets the kernel hand requests to either worker.
HTTP = httpx.Client(timeout=10, limits=httpx.Limits(max_keepalive_connections=0))


@dataclass(frozen=True)
class Origin:
    path: Path
    refs: dict[str, str]


def git(*args: str, cwd: Path) -> str:
    result = subprocess.run(
        ["git", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"},
    )
    return result.stdout.strip()


def app_env(database_url: str, data_dir: Path, **extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("JOBAPP_", "PROMETHEUS_"))}
    env.pop("PYTHONPATH", None)
    env.update(JOBAPP_DATABASE_URL=database_url, JOBAPP_DATA_DIR=str(data_dir), JOBAPP_ENV="staging", **extra)
    return env


@dataclass
class Checkout:
    app_dir: Path
    database_url: str
    data_dir: Path
    extra_env: dict[str, str] = field(default_factory=dict)

    def switch(self, ref: str) -> None:
        git("checkout", "--quiet", ref, cwd=self.app_dir)

    def head(self) -> str:
        return git("rev-parse", "HEAD", cwd=self.app_dir)

    def alembic_config(self) -> Config:
        config = Config(str(self.app_dir / "alembic.ini"))
        config.set_main_option("sqlalchemy.url", self.database_url.replace("%", "%%"))
        config.attributes["configure_logger"] = False
        return config

    def upgrade(self, revision: str = "head") -> None:
        command.upgrade(self.alembic_config(), revision)

    def downgrade(self, revision: str) -> None:
        command.downgrade(self.alembic_config(), revision)

    @property
    def env(self) -> dict[str, str]:
        return app_env(self.database_url, self.data_dir, **self.extra_env)

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        """``python ARGS`` with this checkout's interpreter setup, in the app dir."""
        return subprocess.run(
            [sys.executable, *args],
            check=False,
            cwd=self.app_dir,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    def seed(self, profile: str) -> None:
        result = self.run("-m", "jobapp.seed", "--profile", profile)
        assert result.returncode == 0, result.stderr

    def requests(self, *calls: tuple[str, str, Any]) -> list[dict[str, Any]]:
        """Send ``(method, path, json)`` calls to this release's app, in a process of its own."""
        result = self.run(str(PROBE), json.dumps(calls))
        assert result.returncode == 0, result.stderr
        answers: list[dict[str, Any]] = json.loads(result.stdout)
        return answers


MakeCheckout = Callable[[str, str], Checkout]


class Database:
    """Looks into a database, for assertions."""

    def __init__(self, url: str) -> None:
        self.engine: Engine = create_engine(url, poolclass=NullPool)

    def scalar(self, sql: str) -> Any:
        with self.engine.connect() as connection:
            return connection.execute(text(sql)).scalar()

    def revision(self) -> str | None:
        found: str | None = self.scalar("SELECT version_num FROM alembic_version")
        return found

    def tables(self) -> set[str]:
        return set(inspect(self.engine).get_table_names())

    def columns(self, table: str) -> set[str]:
        return {column["name"] for column in inspect(self.engine).get_columns(table)}

    def indexes(self, table: str) -> dict[str, bool]:
        return {
            str(index["name"]): bool(index["unique"]) for index in inspect(self.engine).get_indexes(table)
        }

    def counts(self) -> dict[str, int]:
        tables = ("jobs", "applications", "documents", "outbox", "user_sessions")
        return {table: int(self.scalar(f"SELECT count(*) FROM {table}")) for table in tables}


@dataclass
class Server:
    base_url: str
    process: subprocess.Popen[bytes]
    log_file: Path

    @property
    def master_pid(self) -> int:
        return self.process.pid

    def worker_pids(self) -> set[int]:
        path = Path(f"/proc/{self.master_pid}/task/{self.master_pid}/children")
        return {int(pid) for pid in path.read_text().split()}

    def get(self, path: str) -> httpx.Response:
        return HTTP.get(f"{self.base_url}{path}")

    def wait_until(self, predicate: Callable[[], bool], what: str, seconds: float = 20) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(
                    f"gunicorn exited ({self.process.returncode}):\n{self.log_file.read_text()}"
                )
            try:
                if predicate():
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"{what} within {seconds} s; log:\n{self.log_file.read_text()}")

    def stop(self) -> None:
        if self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def start_gunicorn(checkout: Checkout, run_dir: Path, workers: int = 2) -> Server:
    run_dir.mkdir(parents=True, exist_ok=True)
    bind = f"127.0.0.1:{free_ports(1)[0]}"
    log_file = run_dir / "app.log"
    env = checkout.env | {
        "JOBAPP_BIND": bind,
        "JOBAPP_WORKERS": str(workers),
        "JOBAPP_PID_FILE": str(run_dir / "gunicorn.pid"),
        "JOBAPP_LOG_FILE": str(log_file),
        "JOBAPP_CONTROL_SOCKET": str(run_dir / "gunicorn.ctl"),
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "jobapp.app:app"],
        cwd=checkout.app_dir,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    server = Server(f"http://{bind}", process, log_file)
    try:
        server.wait_until(lambda: server.get("/health").status_code == 200, "gunicorn did not answer")
    except AssertionError:
        server.stop()
        raise
    return server
