"""The database schema: which alembic revision a database is at.

The orchestrator reads the `alembic_version` table itself; upgrades and downgrades run in the app's
own interpreter, because a real app's `env.py` imports its models and settings.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping

from sqlalchemy import inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from deployments.config import EnvironmentConfig
from deployments.errors import BackupFailed, DeployError, LiveDatabaseTouched, MigrationFailed, PreflightError
from deployments.secrets import DEFAULT_PORTS, database_env, redact, resolve_app_environment, resolve_database_url
from deployments.logs import run_log
from tasks.steps import change_step, read_step
from tasks.backups import scratch_copy
from tasks.database_state import DatabaseState, read_state
from tasks.databases import connect, session_name
from tasks.processes import Advice, Command, child_env, run
from tasks.lock_sampling import RevisionMeasure, sampling_locks, sqlite_measures
from tasks.lock_waits import LockWatch, watching_lock_waits
from tasks.release_environments import interpreter


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
    expand_only: bool = False  # it only adds: the previous release's code works on the schema after it
    kind: str = ""  # expand, contract or destructive, as lint-migrations read it from its SQL ("": not read)
    findings: tuple[str, ...] = ()  # the linter's, as "rule verdict", e.g. "ban-drop-column allowed"


@dataclass(frozen=True)
class MigrationStatus:
    heads: list[str]
    current: str | None
    pending: list[PendingRevision]
    known: bool = True
    # Each pending revision's SQL as Alembic's offline mode writes it, and why a revision could not be
    # written out; only when asked for (check_migrations(render=True)), for lint-migrations, which drops it.
    rendered: dict[str, str] | None = None
    render_errors: dict[str, str] | None = None

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
    database: str | None = None,
) -> dict[str, Any]:
    """Run the migration runner in the app's interpreter, in the app's directory of `cwd` (a workspace or
    worktree: alembic_config and its script_location resolve there), on the
    database `app_env` points the app at: `database`, its URL (the live one when not given)."""
    env = child_env(app_env)
    # libpq reads these, so the app's own engine gets bounded waits and a name we can find it by.
    env["PGOPTIONS"] = (f"-c lock_timeout={config.database.lock_timeout_ms} "
                        f"-c statement_timeout={config.database.statement_timeout_ms}")
    application_name = application_name or session_name("migrations")
    env["PGAPPNAME"] = application_name
    # Its source is passed with -c: run as a file, its directory (this package) would come first on
    # the app's sys.path and our `health` or `service` could shadow the app's modules of that name.
    python = interpreter(config, cwd)
    argv = [str(python), "-c", RUNNER.read_text(), *args, "--config", config.database.alembic_config]
    # The app's env.py may set its own lock_timeout (or none): the watch names any lock the runner
    # waits for within a second, and cancels a wait the bound did not end.
    url = database or resolve_database_url(config)
    bound = config.database.lock_timeout_ms / 1000
    with watching_lock_waits(url, application_name, step, bound, run_log()) as watch:
        try:
            result = run(Command.of(argv, cwd=config.app_dir(cwd), env=env, timeout=config.database.statement_timeout_ms / 1000 + 60,
                                    name="alembic"), step=step, error=MigrationFailed, advice=Advice(
                start=f"check service.python ({python}) in the environment file",
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
        raise MigrationFailed(step, f"alembic {doing[-1] if doing else args[0]} failed: {cause}", _after_failure(config, step))
    last = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else "{}"
    payload: dict[str, Any] = json.loads(last)
    return payload


def _after_failure(config: EnvironmentConfig, step: str) -> str:
    """What follows a failed alembic command, for the step it failed in."""
    if step == "run migrations":  # the live database: the deploy's failure starts (or asks for) the rollback
        then = (f"{config.name} is rolled back automatically" if config.rollback.automatic
                else f"run rollback/{config.name} by hand")
        return f"the release's migration must be fixed; {then}"
    if step == "downgrade database":
        return "the rollback restores the verified backup instead"
    return f"the release's migrations must be fixed; {config.name} was not changed"


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
                     current: str | None, render: bool = False) -> MigrationStatus:
    """What is pending; with `render`, each pending revision's SQL too, from the same run of the app's
    interpreter (its imports are the run's cost)."""
    payload = run_runner(config, app_env, cwd, "status", "--current", current or "", *(["--render"] if render else []),
                         step="check migrations")
    return MigrationStatus(
        heads=list(payload["heads"]),
        current=payload["current"],
        pending=[PendingRevision(p["revision"], p["message"], bool(p["has_downgrade"])) for p in payload["pending"]],
        known=bool(payload["known"]),
        rendered=dict(payload["sql"]) if render else None,
        render_errors=dict(payload["errors"]) if render else None,
    )


def upgrade(config: EnvironmentConfig, app_env: Mapping[str, str], cwd: Path, application_name: str,
            to: str = "heads", database: str | None = None) -> float:
    payload = run_runner(config, app_env, cwd, "upgrade", "--to", to, step="run migrations",
                         application_name=application_name, database=database)
    return float(payload.get("seconds", 0.0))


def rehearse(config: EnvironmentConfig, app_env: Mapping[str, str], cwd: Path, back_to: str | None,
             revisions: list[str], application_name: str, database: str | None = None) -> list[dict[str, Any]]:
    """Upgrade revision by revision, then (`back_to` given) downgrade to it and upgrade again, in one run
    of the app's interpreter. Each revision's window (wall-clock start and end) of the first upgrade."""
    args = ["--revisions", ",".join(revisions)] + (["--back", back_to] if back_to is not None else ["--once"])
    payload = run_runner(config, app_env, cwd, "rehearse", *args, step="test migrations",
                         application_name=application_name, database=database)
    return list(payload.get("windows", []))


def downgrade(config: EnvironmentConfig, app_env: Mapping[str, str], cwd: Path, to: str,
              application_name: str) -> float:
    payload = run_runner(config, app_env, cwd, "downgrade", "--to", to, step="downgrade database",
                         application_name=application_name)
    return float(payload.get("seconds", 0.0))


@read_step("check-migrations", retries=1)
def check_migrations(config: EnvironmentConfig, release_tree: Path,
                     earlier: MigrationStatus | None = None, render: bool = False) -> MigrationStatus:
    """Runbook step 2: the release's pending migrations against the live database, or none.

    `earlier` is this step's answer for the same release tree earlier in the deploy (prerequisites):
    what is pending depends only on the tree and the live revision, so while the database is still
    at that revision the answer stands and the release's scripts are not run again."""
    app_env = resolve_app_environment(config)
    current = database_revision(resolve_database_url(config))
    if earlier is not None and earlier.current == current:
        status = earlier
    else:
        status = migration_status(config, app_env, release_tree, current, render=render)
    if not status.known:
        raise MigrationFailed("check migrations", status.describe(),
                              "the database is ahead of this release: deploy a newer one or roll back by hand")
    if len(status.heads) != 1:
        raise MigrationFailed("check migrations", f"the release has {len(status.heads)} migration heads "
                              f"({', '.join(status.heads)})", "merge the heads (alembic merge) and release again")
    return status


@dataclass(frozen=True)
class Rehearsal:
    detail: str
    measures: list[RevisionMeasure]
    copy_seconds: float | None = None  # copying the live database for it: what a restore of its size takes

    def describe(self) -> str:
        measured = "; ".join(m.describe() for m in self.measures)
        return f"{self.detail}. Measured on the copy, revision by revision: {measured}" if measured else self.detail

    def of(self, revision: str) -> RevisionMeasure | None:
        return next((m for m in self.measures if m.revision == revision), None)


@read_step("test-migrations", retries=0)
def test_migrations(config: EnvironmentConfig, release_tree: Path, scratch_dir: Path,
                    status: MigrationStatus) -> Rehearsal:
    """Prerequisite: upgrade, downgrade, upgrade on a scratch copy of the live database, so a
    migration that fails on production's data fails here, before anything changes; each revision's
    time and strongest lock measured on the way up, against migrations.max_lock_seconds. `status` is
    check-migrations' answer for the same tree (one head, what is pending), taken just before."""
    if not status.pending:
        return Rehearsal("No pending migrations; nothing to rehearse", [])
    app_env = resolve_app_environment(config)
    url = resolve_database_url(config)
    step = "test migrations"
    _refuse_live_database_elsewhere(config, app_env, url, step)
    try:
        started = time.monotonic()
        with scratch_copy(url, scratch_dir, config.backups.pg_dump, config.backups.pg_restore,
                          config.database.lock_timeout_ms, step) as copy:
            copied = round(time.monotonic() - started, 3)
            # Read after the copy: a lock on the live database fails the copy first, naming its holder.
            before = _live_state(config, url, step)
            try:
                return replace(_rehearse_on(config, release_tree, status, app_env, copy, step), copy_seconds=copied)
            finally:
                _live_database_unmoved(config, url, before, step)
    except BackupFailed as exc:  # the copy could not be made: a prerequisite not met, nothing changed
        raise PreflightError(step, exc.cause, exc.action) from None


# A variable whose name says it configures a database (its value the live database's name is no accident).
_DATABASE_WORDS = re.compile(r"DB|DATABASE|DSN|PG|POSTGRES|MYSQL|SQL", re.IGNORECASE)


def live_database_elsewhere(config: EnvironmentConfig, app_env: Mapping[str, str], url: str) -> list[str]:
    """The app's variables outside [database] that still lead to the live database (its URL, a URL of
    the same host, port and database, its password, its file, or its name in a database variable).
    The rehearsal points only [database]'s variables at the copy: any of these would reach production."""
    live = make_url(url)
    backend = live.get_backend_name()
    file = str(Path(live.database).resolve()) if backend == "sqlite" and live.database else None
    found = []
    for name, value in sorted(app_env.items()):
        if name in config.database.variables or not value:
            continue
        what = None
        if url in value or live.render_as_string(hide_password=True) in value:
            what = "the live database's URL"
        elif "://" in value and _same_database(value, live):
            what = "a URL of the live database"
        elif live.password and len(live.password) >= 4 and live.password in value:
            what = "the live database's password"
        elif file is not None and (value == live.database or _resolves_to(value, config, file)):
            what = "the live database's file"
        elif backend != "sqlite" and value == live.database and _DATABASE_WORDS.search(name):
            what = "the live database's name"
        if what:
            where = "service.secrets" if name in config.service.secrets else "service.env"
            found.append(f"{name} ([{where}], {what})")
    return found


def _same_database(value: str, live: Any) -> bool:
    try:
        other = make_url(value.strip())
    except Exception:  # noqa: BLE001 - not a URL after all
        return False
    port = DEFAULT_PORTS.get(live.get_backend_name())
    return (other.get_backend_name() == live.get_backend_name() and other.database == live.database
            and (other.host or "localhost") == (live.host or "localhost") and (other.port or port) == (live.port or port))


def _resolves_to(value: str, config: EnvironmentConfig, file: str) -> bool:
    """`value`, a path as the app would read it (relative to its workspace), is the live SQLite file."""
    if "/" not in value and not value.endswith((".db", ".sqlite", ".sqlite3")):
        return False
    path = Path(value.removeprefix("sqlite:///"))
    return str((config.app_dir() / path).resolve()) == file


def _refuse_live_database_elsewhere(config: EnvironmentConfig, app_env: Mapping[str, str], url: str, step: str) -> None:
    found = live_database_elsewhere(config, app_env, url)
    if found:
        raise PreflightError(
            step, f"the app would still reach the live database through {'; '.join(found)}: the rehearsal points "
                  "only the variables of [database] at the copy",
            f"give those variables from the URL instead: [database.app_variables] maps each to a part (url, host, "
            f"port, user, password, name), and remove them from [service.env]/[service.secrets]; {config.name} was "
            "not touched")


def _live_state(config: EnvironmentConfig, url: str, step: str) -> DatabaseState:
    engine = connect(url, session_name("guard"), config.database.lock_timeout_ms, read_only=True)
    try:
        with engine.connect() as conn:
            return read_state(conn, counts=False)
    except SQLAlchemyError as exc:
        raise PreflightError(step, f"cannot read the live database's schema ({redact(str(exc.orig or exc))[:300]})",
                             "check database.url and that the database is up") from None
    finally:
        engine.dispose()


def _live_database_unmoved(config: EnvironmentConfig, url: str, before: DatabaseState, step: str,
                           what: str = "the rehearsal", pointed: str = "was pointed at a copy") -> None:
    """The guard after the rehearsal, the release's tests and the canary: whatever the configuration,
    the live database's revision and schema are as they were."""
    after = _live_state(config, url, step)
    moved = before.differences(after)
    if moved:
        raise LiveDatabaseTouched(
            step, f"{what} changed the LIVE database of {config.name} ({'; '.join(moved)}), though the app "
                  f"{pointed}: it reaches its database in a way the environment file does not describe",
            "check the live database now and restore its last backup if needed; then make the app take every "
            "database setting from the variables of [database] before deploying again")


@contextmanager
def live_schema_unmoved(config: EnvironmentConfig, step: str, what: str, pointed: str) -> Iterator[None]:
    """Around a step that runs the release but must never change the live schema (its tests, its canary):
    the live revision and schema fingerprint are read before and compared after, even when it fails."""
    url = resolve_database_url(config)
    before = _live_state(config, url, step)
    try:
        yield
    except BaseException:
        try:
            _live_database_unmoved(config, url, before, step, what, pointed)
        except LiveDatabaseTouched:
            raise
        except DeployError:
            pass  # the guard could not read the database again: the step's own failure says more
        raise
    _live_database_unmoved(config, url, before, step, what, pointed)


def _rehearse_on(config: EnvironmentConfig, release_tree: Path, status: MigrationStatus, app_env: Mapping[str, str],
                 copy: str, step: str) -> Rehearsal:
    """The rehearsal proper, with the app pointed at the copy; its locks sampled meanwhile."""
    rehearsal_env = {**app_env, **database_env(config, copy)}
    name = session_name("rehearsal")
    round_trip = all(p.has_downgrade for p in status.pending)
    revisions = [p.revision for p in status.pending]
    try:
        with sampling_locks(copy, config.database.lock_timeout_ms) as sampler:
            windows = rehearse(config, rehearsal_env, release_tree, (status.current or "base") if round_trip else None,
                               revisions, name, database=copy)
            if sampler is not None:
                sampler.stop()
                measures = sampler.measure(windows)
            else:
                measures = sqlite_measures(windows)
    except MigrationFailed as exc:
        raise PreflightError(step, f"on a copy of {config.name}'s data, {exc.cause}",
                             f"fix the migration in the release; {config.name} was not touched") from None
    _within_budget(config, measures, step)
    how = "upgrade, downgrade, upgrade" if round_trip else (
        "upgrade (no downgrade in " + ", ".join(p.revision for p in status.pending if not p.has_downgrade) + ")")
    return Rehearsal(f"{how} passed on a copy of {config.name}'s database: {status.describe()}", measures)


def _within_budget(config: EnvironmentConfig, measures: list[RevisionMeasure], step: str) -> None:
    budget = config.migrations.max_lock_seconds
    over = [m for m in measures if budget is not None and m.blocking_seconds > budget]
    if over:
        worst = max(over, key=lambda m: m.blocking_seconds)
        raise PreflightError(step, f"revision {worst.revision} held {worst.lock.describe() if worst.lock else ''} on a "
                             f"copy of {config.name}'s database, over migrations.max_lock_seconds = {budget:g}",
                             "make the migration hold its lock for less (CREATE INDEX CONCURRENTLY, a nullable column "
                             "filled in batches, a NOT VALID constraint validated later), or raise the budget in "
                             f"{config.name}'s file; {config.name} was not touched")


@change_step("run-migrations")
def run_migrations(config: EnvironmentConfig, application_name: str) -> str:
    """Runbook step 5: upgrade the live database to the release's head, in the app's interpreter."""
    app_env = resolve_app_environment(config)
    seconds = upgrade(config, app_env, config.source.workspace, application_name)
    revision = database_revision(resolve_database_url(config))
    return f"database at {revision} after {seconds:.2f} s"


@change_step("downgrade-database")
def downgrade_database(config: EnvironmentConfig, release_tree: Path, to_revision: str | None,
                       application_name: str) -> str:
    """Rollback step 2: alembic downgrade with the *failed release's* scripts (only they know how)."""
    app_env = resolve_app_environment(config)
    seconds = downgrade(config, app_env, release_tree, to_revision or "base", application_name)
    revision = database_revision(resolve_database_url(config))
    if revision != to_revision:
        raise MigrationFailed("downgrade database", f"the database is at {revision} after the downgrade, "
                              f"expected {to_revision}", "the backup will be restored instead")
    return f"downgraded to {to_revision or 'base'} in {seconds:.2f} s"


@read_step("verify-database-revision", retries=0)
def verify_database_revision(config: EnvironmentConfig, expected: str | None) -> str:
    """The failed migration ran in one transaction that rolled back: the revision must be unchanged."""
    revision = database_revision(resolve_database_url(config))
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
