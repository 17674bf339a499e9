"""The sandbox: a realistic staging + production pair of jobapp on loopback.

`up` builds, in one directory (default `.sandbox/`):

    origin.git/              bare repository; main carries v1..v5, plus an unmerged branch
    sandbox.env              0600; the database URLs the environment files name
    environments/            staging.toml, production.toml for this sandbox
    state/                   the orchestrator's ledger and metrics
    staging/ production/     app/ (a clone at v1), data/, run/ (pid), logs/, backups/

then migrates and seeds both databases (staging's data is clean, production's has the legacy rows
that break v3 and v4) and starts both apps. `up` is idempotent; `down` stops what it started, by pid.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import string
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from deployments.config import EnvironmentConfig, load_environment_file
from deployments.errors import DeployError
from deployments.secrets import resolve_app_environment
from tasks import service
from tasks.health import probe
from tasks.migrations import database_revision

ENVIRONMENTS = ("staging", "production")
DEFAULT_PORTS = {"staging": 8101, "production": 8102}
PROJECT_DIR = Path(__file__).resolve().parent.parent
DEFAULT_ROOT = PROJECT_DIR / ".sandbox"
TEMPLATE = Path(__file__).with_name("environment.toml.in")
POSTGRES_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


class SandboxError(RuntimeError):
    pass


@dataclass(frozen=True)
class InstanceStatus:
    environment: str
    port: int
    pid: int | None
    sha: str | None
    revision: str | None
    health: str


def render_environment(env: str, root: str, python: str, port: int) -> str:
    """The environment file of `env` for a sandbox at `root` (as the file will see it)."""
    values = {
        "env": env,
        "ENV": env.upper(),
        "root": root,
        "python": python,
        "port": str(port),
        "roles": '"team-lead", "product-owner"' if env == "production" else "",
        "staging_line": 'staging_environment = "staging"' if env == "production" else "",
    }
    return string.Template(TEMPLATE.read_text()).substitute(values)


def database_url(root: Path, env: str, db: str) -> str:
    if db == "sqlite":
        return f"sqlite:///{root / env / 'data' / 'jobapp.db'}"
    return POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + "/" + postgres_database_name(root, env)


def postgres_database_name(root: Path, env: str) -> str:
    digest = hashlib.sha1(str(root.resolve()).encode()).hexdigest()[:8]
    return f"jobapp_sbx_{digest}_{env}"


def environment_files(root: Path) -> dict[str, Path]:
    return {env: root / "environments" / f"{env}.toml" for env in ENVIRONMENTS}


def up(
    root: Path = DEFAULT_ROOT,
    db: str = "sqlite",
    ports: dict[str, int] | None = None,
    python: Path | None = None,
    log=print,
) -> dict[str, EnvironmentConfig]:
    root = root.resolve()
    ports = {**DEFAULT_PORTS, **(ports or {})}
    python = python or Path(sys.executable)
    root.mkdir(parents=True, exist_ok=True)
    origin = root / "origin.git"
    if not (origin / "HEAD").exists():
        from sample_app.history import HistoryError, build_origin

        partial = root / "origin.git.partial"
        shutil.rmtree(partial, ignore_errors=True)
        try:
            tags = build_origin(partial)
        except HistoryError as exc:
            shutil.rmtree(partial, ignore_errors=True)
            raise SandboxError(f"building the release history failed: {exc}") from None
        partial.rename(origin)
        log(f"origin      {origin} ({', '.join(sorted(tags))})")
    _write_secrets(root, db)
    configs: dict[str, EnvironmentConfig] = {}
    for env, path in environment_files(root).items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(render_environment(env, str(root), str(python), ports[env]))
        configs[env] = config = load_environment_file(path)
        app_env = resolve_app_environment(config)
        _prepare_workspace(config, origin)
        if db == "postgres":
            _create_postgres_database(postgres_database_name(root, env))
        _run_app(config, app_env, [str(python), "-m", "alembic", "upgrade", "head"], "migrate")
        _run_app(config, app_env, [str(python), "-m", "jobapp.seed", "--profile", env], "seed")
        pid = service.running_pid(config)
        if pid is None:
            service.start(config, app_env)
            pid = service.wait_for_pid_file(config, timeout=30)
            _wait_healthy(config, timeout=30)
        log(f"{env:<11} {config.service.base_url} pid {pid} ({db})")
    return configs


def down(root: Path = DEFAULT_ROOT, log=print) -> list[int]:
    stopped = []
    for env, path in environment_files(root.resolve()).items():
        if not path.exists():
            continue
        pid = service.stop(load_environment_file(path))
        if pid is not None:
            stopped.append(pid)
            log(f"{env:<11} stopped pid {pid}")
        else:
            log(f"{env:<11} not running")
    return stopped


def status(root: Path = DEFAULT_ROOT) -> list[InstanceStatus]:
    result = []
    for env, path in environment_files(root.resolve()).items():
        if not path.exists():
            continue
        config = load_environment_file(path)
        app_env = resolve_app_environment(config)
        port = int(config.service.base_url.rsplit(":", 1)[1])
        sha = _git(config.source.workspace, "rev-parse", "HEAD") if config.source.workspace.exists() else None
        try:
            revision = database_revision(app_env[config.database.app_variable])
        except DeployError as exc:
            revision = f"unreadable ({exc.cause})"
        answer = probe(config.service.base_url + config.health.api_path, timeout=3)
        if answer.body is not None:
            health = f"{answer.body.get('status')} (HTTP {answer.status_code}, serves {str(answer.body.get('version'))[:12]})"
        else:
            health = answer.describe()
        result.append(InstanceStatus(env, port, service.running_pid(config), sha, revision, health))
    return result


def _write_secrets(root: Path, db: str) -> None:
    lines = [f"JOBAPP_{env.upper()}_DATABASE_URL={database_url(root, env, db)}" for env in ENVIRONMENTS]
    target = root / "sandbox.env"
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write("# Written by `deployctl sandbox up`. Secret values live here, never in environment files.\n")
        handle.write("\n".join(lines) + "\n")


def _prepare_workspace(config: EnvironmentConfig, origin: Path) -> None:
    workspace = config.source.workspace
    if not (workspace / ".git").exists():
        workspace.parent.mkdir(parents=True, exist_ok=True)
        _git(workspace.parent, "clone", "--quiet", "--no-checkout", "--", str(origin), workspace.name)
        _git(workspace, "checkout", "--quiet", "--detach", "v1")
    for sub in ("data", "run", "logs", "backups"):
        (workspace.parent / sub).mkdir(exist_ok=True)


def _create_postgres_database(name: str) -> None:
    from sqlalchemy import create_engine, text

    engine = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            exists = conn.execute(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}).first()
            if not exists:
                conn.execute(text(f'CREATE DATABASE "{name}"'))
    finally:
        engine.dispose()


def drop_postgres_databases(root: Path) -> None:
    from sqlalchemy import create_engine, text

    engine = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            for env in ENVIRONMENTS:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{postgres_database_name(root, env)}" WITH (FORCE)'))
    finally:
        engine.dispose()


def _run_app(config: EnvironmentConfig, app_env: dict[str, str], argv: list[str], what: str) -> None:
    result = subprocess.run(
        argv,
        cwd=config.source.workspace,
        env=service.app_process_env(app_env),
        capture_output=True,
        text=True,
        timeout=300,
    )
    if result.returncode != 0:
        raise SandboxError(f"{what} of {config.name} failed (exit {result.returncode}):\n{result.stderr[-2000:]}")


def _wait_healthy(config: EnvironmentConfig, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    url = config.service.base_url + config.health.path
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise SandboxError(f"{config.name} did not answer {url} within {timeout:.0f} s; see {config.service.startup_log}")


def _git(cwd: Path, *args: str) -> str:
    result = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        raise SandboxError(f"git {args[0]} failed in {cwd}: {result.stderr.strip()}")
    return result.stdout.strip()
