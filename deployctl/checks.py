"""`deployctl check ENV`: what an environment file points at, checked without changing anything."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from sqlalchemy.engine import make_url

from deployments.config import EnvironmentConfig
from deployments.errors import DeployError
from deployments.secrets import resolve_app_environment, resolve_database_url
from tasks.health import probe
from tasks.migrations import database_revision
from tasks.process_state import running_pid
from tasks.source import branch_head, current_sha


@dataclass(frozen=True)
class CheckResult:
    name: str
    ok: bool
    detail: str


def check_environment(config: EnvironmentConfig) -> list[CheckResult]:
    """Each check runs even when an earlier one failed, so one run shows every problem."""
    app_env: dict[str, str] = {}

    def secrets() -> str:
        app_env.update(resolve_app_environment(config))
        names = [*config.service.secrets, *config.database.variables]
        return f"resolved {', '.join(names)} (values not shown)"

    def repository() -> str:
        _must_exist(config.source.workspace)
        sha = branch_head(config)
        if sha is None:
            raise _Fail(f"{config.source.repository} has no branch {config.source.branch!r}")
        return f"{config.source.branch} at {sha[:12]} in {config.source.repository}"

    def workspace() -> str:
        _must_exist(config.source.workspace)
        return f"{config.source.workspace} at {current_sha(config.source.workspace)[:12]}"

    def interpreter() -> str:
        if not os.access(config.service.python, os.X_OK):
            raise _Fail(f"{config.service.python} is not an executable; set service.python")
        return str(config.service.python)

    def process() -> str:
        pid = running_pid(config)
        if pid is None:
            raise _Fail(f"no live process in {config.service.pid_file}; start the app or fix service.pid_file")
        return f"pid {pid}"

    def health() -> str:
        answer = probe(config.service.base_url + config.health.api_path, config.health.timeout_seconds)
        if not answer.ok:
            raise _Fail(answer.describe())
        version = (answer.body or {}).get("version", "no version reported")
        return f"{answer.url} ok, serves {str(version)[:12]}"

    def database() -> str:
        if not app_env:
            raise _Fail("skipped: the database URL did not resolve")
        url = resolve_database_url(config)
        revision = database_revision(url)
        return f"{make_url(url).get_backend_name()} at revision {revision or '(none)'}"

    def backups() -> str:
        target = config.backups.directory
        parent = target if target.exists() else target.parent
        if not os.access(parent, os.W_OK):
            raise _Fail(f"{target} is not writable")
        url = resolve_database_url(config) if app_env else ""
        if url.startswith("postgresql"):
            for tool in (config.backups.pg_dump, config.backups.pg_restore):
                if shutil.which(tool) is None:
                    raise _Fail(f"{tool} is not on PATH; install the PostgreSQL client tools")
        return f"{target} writable"

    checks: list[tuple[str, Callable[[], str]]] = [
        ("secrets", secrets),
        ("source repository", repository),
        ("workspace", workspace),
        ("app interpreter", interpreter),
        ("app process", process),
        ("health", health),
        ("database", database),
        ("backups", backups),
    ]
    results = []
    for name, check in checks:
        try:
            results.append(CheckResult(name, True, check()))
        except (_Fail, DeployError, OSError) as exc:
            results.append(CheckResult(name, False, str(exc)))
    return results


class _Fail(Exception):
    pass


def _must_exist(directory: Path) -> None:
    if not directory.is_dir():
        raise _Fail(f"{directory} does not exist")
