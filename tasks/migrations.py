"""The database schema: which alembic revision a database is at.

The orchestrator reads the `alembic_version` table itself; upgrades and downgrades run in the app's
own interpreter, because a real app's `env.py` imports its models and settings.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from sqlalchemy import inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from deployments.config import EnvironmentConfig
from deployments.errors import BackupFailed, MigrationFailed, PreflightError
from deployments.secrets import redact, resolve_app_environment
from deployments.logs import run_log
from tasks.steps import change_step, read_step
from tasks.backups import scratch_copy
from tasks.databases import connect, session_name
from tasks.processes import Advice, Command, child_env, run
from tasks.lock_waits import LockWatch, watching_lock_waits


def database_revision(url: str, application_name: str | None = None) -> str | None:
    """The alembic revision the database is at; None for a database alembic never touched."""
    engine = connect(url, application_name, read_only=True)
    try:
        with engine.connect() as conn:
            if not inspect(conn).has_table("alembic_version"):
                return None
            rows = conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
    except SQLAlchemyError as exc:
        raise MigrationFailed(
            "check migrations",
            f"cannot read the database revision ({type(exc).__name__}: {str(exc).splitlines()[0]})",
            "check that the database is up and database.url points at it",
        ) from None
    finally:
        engine.dispose()
    if len(rows) > 1:
        raise MigrationFailed(
            "check migrations",
            f"the database has {len(rows)} alembic heads ({', '.join(rows)})",
            "merge the heads in the release before deploying",
        )
    return rows[0] if rows else None


RUNNER = Path(__file__).with_name("migration_runner.py")


@dataclass(frozen=True)
class PendingRevision:
    revision: str
    message: str
    has_downgrade: bool


@dataclass(frozen=True)
class MigrationStatus:
    heads: list[str]
    current: str | None
    pending: list[PendingRevision]
    known: bool = True

    def describe(self) -> str:
        if not self.known:
            return f"the database is at {self.current}, which this release's scripts do not know"
        if not self.pending:
            return "No pending migrations"
        return "Pending: " + ", ".join(f"{p.revision} ({p.message})" for p in self.pending)


def run_runner(
    config: EnvironmentConfig,
    app_env: Mapping[str, str],
    cwd: Path,
    *args: str,
    step: str,
    application_name: str | None = None,
) -> dict[str, Any]:
    """Run the migration runner in the app's interpreter, in `cwd` (a workspace or worktree)."""
    env = child_env(app_env)
    # libpq reads these, so the app's own engine gets bounded waits and a name we can find it by.
    env["PGOPTIONS"] = (f"-c lock_timeout={config.database.lock_timeout_ms} "
                        f"-c statement_timeout={config.database.statement_timeout_ms}")
    application_name = application_name or session_name("migrations")
    env["PGAPPNAME"] = application_name
    # Its source is passed with -c: run as a file, its directory (this package) would come first on
    # the app's sys.path and our `health` or `service` could shadow the app's modules of that name.
    argv = [str(config.service.python), "-c", RUNNER.read_text(), *args, "--config", config.database.alembic_config]
    # The app's env.py may set its own lock_timeout (or none): the watch names any lock the runner
    # waits for within a second, and cancels a wait the bound did not end.
    url = app_env.get(config.database.app_variable, "sqlite://")
    bound = config.database.lock_timeout_ms / 1000
    with watching_lock_waits(url, application_name, step, bound, run_log()) as watch:
        try:
            result = run(Command.of(argv, cwd=cwd, env=env, timeout=config.database.statement_timeout_ms / 1000 + 60,
                                    name="alembic"), step=step, error=MigrationFailed, advice=Advice(
                start=f"check service.python ({config.service.python}) in the environment file",
                slow="look for a blocking session in the database, then roll back or run again"))
        except MigrationFailed as exc:
            if watch.seen is None:
                raise
            raise MigrationFailed(step, exc.cause + _waited(watch), exc.action) from None
    if result.returncode != 0:
        cause = redact(_error_line(result.stderr) or f"exit {result.returncode}")
        doing = re.findall(r"^migration-runner: (\w+)$", result.stderr, flags=re.M)  # which of a rehearsal's steps
        if watch.seen is not None:
            raise MigrationFailed(step, f"alembic {doing[-1] if doing else args[0]} gave up{_waited(watch)}",
                                  "end that session or wait for it to finish, then run again")
        raise MigrationFailed(step, f"alembic {doing[-1] if doing else args[0]} failed: {cause}",
                              "the release's migration must be fixed; production is being rolled back")
    last = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else "{}"
    payload: dict[str, Any] = json.loads(last)
    return payload


def _waited(watch: LockWatch) -> str:
    return f" waiting for {watch.seen.describe()}" if watch.seen is not None else ""


_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Failure|Warning)\b.*: \S")


def _error_line(stderr: str) -> str | None:
    """The line of a traceback that says what went wrong (SQLAlchemy adds hint lines after it)."""
    lines = [line.strip() for line in stderr.strip().splitlines() if line.strip()]
    for line in reversed(lines):
        if _EXCEPTION_LINE.match(line):
            return line[:400]
    return lines[-1][:400] if lines else None


def migration_status(config: EnvironmentConfig, app_env: Mapping[str, str], cwd: Path,
                     current: str | None) -> MigrationStatus:
    payload = run_runner(config, app_env, cwd, "status", "--current", current or "", step="check migrations")
    return MigrationStatus(
        heads=list(payload["heads"]),
        current=payload["current"],
        pending=[PendingRevision(p["revision"], p["message"], bool(p["has_downgrade"])) for p in payload["pending"]],
        known=bool(payload["known"]),
    )


def upgrade(config: EnvironmentConfig, app_env: Mapping[str, str], cwd: Path, application_name: str,
            to: str = "heads") -> float:
    payload = run_runner(config, app_env, cwd, "upgrade", "--to", to, step="run migrations",
                         application_name=application_name)
    return float(payload.get("seconds", 0.0))


def rehearse(config: EnvironmentConfig, app_env: Mapping[str, str], cwd: Path, back_to: str,
             application_name: str) -> float:
    """Upgrade to the heads, downgrade to `back_to`, upgrade again, in one run of the app's interpreter."""
    payload = run_runner(config, app_env, cwd, "rehearse", "--back", back_to, step="test migrations",
                         application_name=application_name)
    return float(payload.get("seconds", 0.0))


def downgrade(config: EnvironmentConfig, app_env: Mapping[str, str], cwd: Path, to: str,
              application_name: str) -> float:
    payload = run_runner(config, app_env, cwd, "downgrade", "--to", to, step="downgrade database",
                         application_name=application_name)
    return float(payload.get("seconds", 0.0))


@read_step("check-migrations", retries=1)
def check_migrations(config: EnvironmentConfig, release_tree: Path,
                     earlier: MigrationStatus | None = None) -> MigrationStatus:
    """Runbook step 2: the release's pending migrations against the live database, or none.

    `earlier` is this step's answer for the same release tree earlier in the deploy (prerequisites):
    what is pending depends only on the tree and the live revision, so while the database is still
    at that revision the answer stands and the release's scripts are not run again."""
    app_env = resolve_app_environment(config)
    current = database_revision(app_env[config.database.app_variable])
    if earlier is not None and earlier.current == current:
        status = earlier
    else:
        status = migration_status(config, app_env, release_tree, current)
    if not status.known:
        raise MigrationFailed("check migrations", status.describe(),
                              "the database is ahead of this release: deploy a newer one or roll back by hand")
    if len(status.heads) != 1:
        raise MigrationFailed("check migrations", f"the release has {len(status.heads)} migration heads "
                              f"({', '.join(status.heads)})", "merge the heads (alembic merge) and release again")
    return status


@read_step("test-migrations", retries=0)
def test_migrations(config: EnvironmentConfig, release_tree: Path, scratch_dir: Path,
                    status: MigrationStatus) -> str:
    """Prerequisite: upgrade, downgrade, upgrade on a scratch copy of the live database, so a
    migration that fails on production's data fails here, before anything changes. `status` is
    check-migrations' answer for the same tree (one head, what is pending), taken just before."""
    if not status.pending:
        return "No pending migrations; nothing to rehearse"
    app_env = resolve_app_environment(config)
    url = app_env[config.database.app_variable]
    step = "test migrations"
    try:
        with scratch_copy(url, scratch_dir, config.backups.pg_dump, config.backups.pg_restore,
                          config.database.lock_timeout_ms, step) as copy:
            return _rehearse_on(config, release_tree, status, app_env, copy, step)
    except BackupFailed as exc:  # the copy could not be made: a prerequisite not met, nothing changed
        raise PreflightError(step, exc.cause, exc.action) from None


def _rehearse_on(config: EnvironmentConfig, release_tree: Path, status: MigrationStatus, app_env: Mapping[str, str],
                 copy: str, step: str) -> str:
    """The rehearsal proper, with the app pointed at the copy."""
    rehearsal_env = {**app_env, config.database.app_variable: copy}
    name = session_name("rehearsal")
    try:
        if all(p.has_downgrade for p in status.pending):
            rehearse(config, rehearsal_env, release_tree, status.current or "base", name)
        else:
            upgrade(config, rehearsal_env, release_tree, name)
    except MigrationFailed as exc:
        raise PreflightError(step, f"on a copy of {config.name}'s data, {exc.cause}",
                             f"fix the migration in the release; {config.name} was not touched") from None
    round_trip = "upgrade, downgrade, upgrade" if all(p.has_downgrade for p in status.pending) else (
        "upgrade (no downgrade in " + ", ".join(p.revision for p in status.pending if not p.has_downgrade) + ")")
    return f"{round_trip} passed on a copy of {config.name}'s database: {status.describe()}"


@change_step("run-migrations")
def run_migrations(config: EnvironmentConfig, application_name: str) -> str:
    """Runbook step 5: upgrade the live database to the release's head, in the app's interpreter."""
    app_env = resolve_app_environment(config)
    seconds = upgrade(config, app_env, config.source.workspace, application_name)
    revision = database_revision(app_env[config.database.app_variable])
    return f"database at {revision} after {seconds:.2f} s"


@change_step("downgrade-database")
def downgrade_database(config: EnvironmentConfig, release_tree: Path, to_revision: str | None,
                       application_name: str) -> str:
    """Rollback step 2: alembic downgrade with the *failed release's* scripts (only they know how)."""
    app_env = resolve_app_environment(config)
    seconds = downgrade(config, app_env, release_tree, to_revision or "base", application_name)
    revision = database_revision(app_env[config.database.app_variable])
    if revision != to_revision:
        raise MigrationFailed("downgrade database", f"the database is at {revision} after the downgrade, "
                              f"expected {to_revision}", "the backup will be restored instead")
    return f"downgraded to {to_revision or 'base'} in {seconds:.2f} s"


@read_step("verify-database-revision", retries=0)
def verify_database_revision(config: EnvironmentConfig, expected: str | None) -> str:
    """The failed migration ran in one transaction that rolled back: the revision must be unchanged."""
    app_env = resolve_app_environment(config)
    revision = database_revision(app_env[config.database.app_variable])
    if revision != expected:
        raise MigrationFailed("verify database revision", f"the database is at {revision}, expected {expected}",
                              "the backup will be restored instead")
    return f"database unchanged at {expected}"


def end_orphaned_sessions(url: str, application_prefix: str, wait_seconds: float = 10.0) -> list[int]:
    """PostgreSQL sessions a killed run left behind hold locks: wait for them to end, then end them."""
    if make_url(url).get_backend_name() != "postgresql":
        return []
    engine = connect(url, "deploy-rollback")
    query = text("SELECT pid FROM pg_stat_activity WHERE application_name LIKE :prefix AND pid <> pg_backend_pid()")
    ended: list[int] = []
    try:
        deadline = time.monotonic() + wait_seconds
        with engine.connect() as conn:
            while True:
                pids = list(conn.execute(query, {"prefix": f"{application_prefix}%"}).scalars())
                conn.commit()
                if not pids:
                    break
                if time.monotonic() >= deadline:
                    for pid in pids:
                        conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
                    conn.commit()
                    ended = pids
                    break
                time.sleep(0.5)
    finally:
        engine.dispose()
    return ended
