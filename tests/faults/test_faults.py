"""FAULTS.md on real sandboxes: each fault injected into a whole deploy, then every invariant checked.

    SQLite
    #16  environment file: unknown key, wrong type, missing secret;     nothing runs: no ledger row, no fetch
         also a missing secret block, a secret in the file, a missing field, staging's file broken
    #1   staging answers 503; also staging going down while approving   abort before any production change
    #6   migration 2 of 3 fails                                         backup restored, code reverted
    #7   a critical path fails after the migrations                     downgrade, then code revert
         health 200 at boot and 503 3 s later (no canary)                 phase 3 fails, rolled back
    #8   the backup directory cannot be created                         abort before migrating
    #12  two deploys to staging at once                                 one proceeds, the other names it
    PostgreSQL, production's URL carrying a password throughout
    #8   pg_dump fails on a full disk; also writes an unreadable archive  abort, no partial backup left
         a table locked by another session when the deploy starts        abort within the bound, holder named
    #15  a succeeded deploy (and the failures around it)                the password appears nowhere
    #5   migration 2 of 3 fails                                         nothing committed, code reverted

One sandbox per database kind, shared by the tests of that kind in the order above; each test
brings the environments to the state it starts from (`bring`), so it also runs on its own.
The failing releases are committed into the sandbox's origin by tests/faults/releases.py.
The PostgreSQL sandbox runs production as a role with a password for all its tests, and a thread
samples every process's argv meanwhile, so #15 covers deploys that abort, fail and succeed.
"""

from __future__ import annotations

import json
import re
import secrets
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import make_url

from deployments.errors import (
    BackupFailed,
    ConfigError,
    HealthCheckFailed,
    LockHeld,
    MigrationFailed,
    PreflightError,
    ServiceError,
)
from deployments.secrets import resolve_app_environment
from sample_app.sandbox import postgres_database_name
from tasks import app_process
from tasks.app_commands import expand_argv
from tasks.process_state import running_pid
from records.ledger import Ledger, Release
from tasks.processes import child_env
from tests.faults.releases import (
    EMAIL_BROKEN,
    EMAIL_BROKEN_HOTFIX_A,
    EMAIL_BROKEN_HOTFIX_B,
    HEALTH_FLAPS,
    MIGRATION_FAILS_MIDWAY,
    add_fault_releases,
)
from deployctl.stack import Stack
from tests.flows.conftest import Approver, Sandbox, approval, make_sandbox
from tests.flows.invariants import (
    assert_healthy_on,
    assert_lock_free,
    assert_metrics_moved,
    deployments_metric,
    last_release,
    state,
)

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_server")]
APPROVERS = [approval("Dana Whitfield", "team-lead"), approval("Sam Okafor", "product-owner")]


# --- sandboxes ----------------------------------------------------------------------------------------


def fault_sandbox(tmp_path_factory: pytest.TempPathFactory, db: str) -> Iterator[Sandbox]:
    with contextmanager(make_sandbox)(tmp_path_factory, db) as box:
        add_fault_releases(box.root / "origin.git")
        yield box


@pytest.fixture(scope="module")
def sqlite_sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    yield from fault_sandbox(tmp_path_factory, "sqlite")


@pytest.fixture(scope="module")
def postgres_sandbox(tmp_path_factory: pytest.TempPathFactory, postgres_admin_url: str) -> Iterator[Sandbox]:
    yield from fault_sandbox(tmp_path_factory, "postgres")


@pytest.fixture
def sq(sqlite_sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> Sandbox:
    # Both sandboxes live until the module ends; the flows find a sandbox through this variable.
    monkeypatch.setenv("DEPLOY_ENVIRONMENTS_DIR", str(sqlite_sandbox.environments))
    return sqlite_sandbox


class ArgvWatch:
    """tests/argv_watch.py in a process of its own, from `start` until `stop`."""

    def __init__(self, secret: str, out: Path) -> None:
        self.secret = secret
        self.out = out
        self.process: subprocess.Popen[str] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen([sys.executable, "-m", "tests.argv_watch", str(self.out)],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                        cwd=Path(__file__).parents[2])
        self._say(self.secret)

    def report(self) -> tuple[set[str], list[str]]:
        """The programs seen so far, and every command line that held the secret."""
        self._say("report")
        assert self.process is not None and self.process.stdout is not None
        assert self.process.stdout.readline().strip() == "ok", "the argv watch stopped answering"
        result = json.loads(self.out.read_text())
        return set(result["seen"]), list(result["hits"])

    def stop(self) -> None:
        if self.process is not None and self.process.stdin is not None and not self.process.stdin.closed:
            self.process.stdin.close()
            self.process.wait(timeout=30)

    def _say(self, line: str) -> None:
        assert self.process is not None and self.process.stdin is not None
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()


@dataclass(frozen=True)
class ProductionSecret:
    password: str
    role: str
    argv: ArgvWatch
    prefect_server: Stack  # its database (SQLite in its home, or PostgreSQL) is searched too


@pytest.fixture(scope="module")
def production_secret(postgres_sandbox: Sandbox, postgres_admin_url: str,
                      prefect_server: Stack) -> Iterator[ProductionSecret]:
    """Production's database belongs to a role with a password, and the app runs with that URL."""
    box = postgres_sandbox
    database = postgres_database_name(box.root, "production")
    role = f"{database}_owner"
    password = f"Fault15-{secrets.token_hex(8)}"
    admin = create_engine(postgres_admin_url, isolation_level="AUTOCOMMIT")
    owned = create_engine(make_url(postgres_admin_url).set(database=database), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"DROP ROLE IF EXISTS {role}"))
        # CREATEDB: the migration rehearsal copies the database into a scratch one.
        conn.execute(text(f"CREATE ROLE {role} LOGIN CREATEDB PASSWORD '{password}'"))
        conn.execute(text(f'ALTER DATABASE "{database}" OWNER TO {role}'))
    with owned.connect() as conn:
        for table in inspect(conn).get_table_names():
            conn.execute(text(f'ALTER TABLE public."{table}" OWNER TO {role}'))
    secrets_file = box.root / "sandbox.env"
    original = secrets_file.read_text()
    secrets_file.write_text(original.replace("JOBAPP_PRODUCTION_DATABASE_URL=postgresql+psycopg://postgres@",
                                             f"JOBAPP_PRODUCTION_DATABASE_URL=postgresql+psycopg://{role}:{password}@"))
    watch = ArgvWatch(password, box.root / "argv-watch.json")
    try:
        restart_app(box, "production")
        watch.start()
        yield ProductionSecret(password, role, watch, prefect_server)
    finally:
        watch.stop()
        secrets_file.write_text(original)
        restart_app(box, "production")
        with owned.connect() as conn:
            conn.execute(text(f"REASSIGN OWNED BY {role} TO postgres"))
            conn.execute(text(f"DROP OWNED BY {role}"))
        owned.dispose()
        with admin.connect() as conn:
            conn.execute(text(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{role}'"))
            conn.execute(text(f"DROP ROLE IF EXISTS {role}"))
        admin.dispose()


@pytest.fixture
def pg(postgres_sandbox: Sandbox, production_secret: ProductionSecret, monkeypatch: pytest.MonkeyPatch) -> Sandbox:
    monkeypatch.setenv("DEPLOY_ENVIRONMENTS_DIR", str(postgres_sandbox.environments))
    return postgres_sandbox


def restart_app(box: Sandbox, env: str) -> None:
    config = box.config(env)
    app_process.stop(config)
    app_process.start(config, resolve_app_environment(config))
    app_process.wait_for_pid_file(config, timeout=30)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(config.service.base_url + config.health.api_path, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{env} did not come back after a restart; see {config.service.startup_log}")


# --- driving the flows ----------------------------------------------------------------------------------


def deploy(env: str, ref: str, approvals: list[dict[str, str]] | None = None, **kwargs: Any) -> str:
    from flows.production_deployment import production_deployment

    approver = None
    if env == "production" and approvals != []:
        approver = Approver(list(approvals or APPROVERS))
        approver.start()
    try:
        return production_deployment(environment=env, ref=ref, **kwargs)
    finally:
        if approver is not None:
            approver.answers.clear()  # a deploy that ended before its approvals leaves them unasked
            approver.join(timeout=5)


def rollback(env: str, **kwargs: Any) -> str:
    from flows.rollback import rollback as flow

    return flow(environment=env, **kwargs)


def bring(box: Sandbox, env: str, ref: str) -> None:
    """Make `env` serve `ref`. A fault release's migrations are unknown to the releases before it,
    so a live one is rolled back by hand first; production takes only what staging serves."""
    ledger = ledger_of(box, env)
    for _ in range(4):
        if live_sha(box, env) == box.sha(ref):
            return
        live = ledger.last_succeeded(env)
        if live is not None and live.ref.startswith("faults/") and live.ref != ref:
            rollback(env, reason="test setup: back to a known release")
            continue
        if env == "production":
            bring(box, "staging", ref)
        deploy(env, ref)
    assert live_sha(box, env) == box.sha(ref), f"{env} could not be brought to {ref}"


def live_sha(box: Sandbox, env: str) -> str:
    return str(state(box, env)["sha"])


def ledger_of(box: Sandbox, env: str) -> Ledger:
    return Ledger.for_state_dir(box.config(env).state_dir)


@contextmanager
def edited(box: Sandbox, env: str, edit: Callable[[str], str]) -> Iterator[None]:
    path = box.environments / f"{env}.toml"
    original = path.read_text()
    edited_text = edit(original)
    assert edited_text != original, "the edit changed nothing"
    path.write_text(edited_text)
    try:
        yield
    finally:
        path.write_text(original)


def without_rehearsal(text_: str) -> str:
    return text_.replace("migration_rehearsal = true", "migration_rehearsal = false")


@contextmanager
def maintenance(box: Sandbox, env: str) -> Iterator[None]:
    """The app's own switch, as the environment file names it: the app answers 503 meanwhile."""
    config = box.config(env)
    run_app_command(box, env, config.service.maintenance_on_command)
    try:
        yield
    finally:
        run_app_command(box, env, config.service.maintenance_off_command)


def run_app_command(box: Sandbox, env: str, argv: list[str]) -> None:
    config = box.config(env)
    subprocess.run(expand_argv(argv, config), cwd=config.source.workspace, check=True, timeout=60,
                   env=child_env(resolve_app_environment(config)), capture_output=True)


# --- invariants -------------------------------------------------------------------------------------------


def backups(box: Sandbox, env: str) -> list[str]:
    directory = box.config(env).backups.directory
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


def snapshot(box: Sandbox, env: str) -> dict[str, Any]:
    """What must not move when a deploy aborts: code, revision, schema and the backup folder."""
    return {**state(box, env), "backups": backups(box, env)}


def assert_one_line(message: str, step: str, cause: str, action: str) -> None:
    assert "\n" not in message, message
    assert message.startswith(f"{step}: "), message
    assert cause in message, message
    assert action in message, message


def assert_aborted(box: Sandbox, env: str, release: Release, step: str) -> None:
    """Ledger: terminal, nothing changed, no rollback of it ever started."""
    assert release.outcome == "aborted" and release.failed_step == step, (release.outcome, release.failed_step)
    assert not release.code_changed and not release.migration_started
    assert release.finished_at is not None
    assert not [r for r in ledger_of(box, env).all_releases(env) if r.rollback_of == release.id]


def rollback_of(box: Sandbox, env: str, release: Release) -> tuple[Release, list[str]]:
    """The one rollback of `release`, and its completed steps in order."""
    ledger = ledger_of(box, env)
    rows = [r for r in ledger.all_releases(env) if r.rollback_of == release.id]
    assert len(rows) == 1, f"{len(rows)} rollbacks of release {release.id}"
    return rows[0], [s.name for s in ledger.steps(rows[0].id) if s.status == "completed"]


def plan_of(box: Sandbox, env: str, rollback_row: Release) -> str:
    return next(s.detail for s in ledger_of(box, env).steps(rollback_row.id) if s.name == "choose-rollback-plan")


# --- #16 environment file -------------------------------------------------------------------------------


def _unknown_key(t: str) -> str:
    return t.replace("[health]\n", "[health]\ntimout_seconds = 5\n", 1)


def _wrong_type(t: str) -> str:
    return t.replace("deadline_seconds = 30", 'deadline_seconds = "soon"', 1)


def _missing_secret(t: str) -> str:
    return t.replace('{ env = "JOBAPP_PRODUCTION_DATABASE_URL" }', '{ env = "JOBAPP_PRODUCTION_DB_URL" }', 1)


def _missing_secret_block(t: str) -> str:
    return t.replace('{ env = "JOBAPP_PRODUCTION_DATABASE_URL" }', '{ secret = "jobapp-production-db" }', 1)


def _secret_in_file(t: str) -> str:
    return re.sub(r'^url = \{ env = "JOBAPP_PRODUCTION_DATABASE_URL" \}$', 'url = "sqlite:////tmp/jobapp.db"', t,
                  count=1, flags=re.M)


def _missing_field(t: str) -> str:
    return re.sub(r"^directory = .*\n", "", t, count=1, flags=re.M)


CONFIG_FAULTS = {
    "unknown key": ("production", _unknown_key, "health.timout_seconds: unknown key",
                    "remove it or rename it (did you mean 'timeout_seconds'?)"),
    "wrong type": ("production", _wrong_type, "health.deadline_seconds: Input should be a valid number",
                   "(got 'soon'). fix the field(s) named"),
    "missing secret": ("production", _missing_secret, "database.url of environment production: environment "
                       "variable JOBAPP_PRODUCTION_DB_URL is not set", "set JOBAPP_PRODUCTION_DB_URL for the worker"),
    "missing secret block": ("production", _missing_secret_block, "database.url of environment production: Prefect "
                             "Secret block 'jobapp-production-db' does not exist", "create it: Secret(value=...)"),
    "secret written in the file": ("production", _secret_in_file, "database.url: secret values are never written "
                                   "in the file", '{ env = "VARIABLE" } or { secret = "block-name" }'),
    "missing field": ("production", _missing_field, "backups.directory: required and missing; add it",
                      "fix the field(s) named"),
    # Production's file names staging's, which the prerequisites and step 1 read.
    "staging's file broken": ("staging", _unknown_key, "staging.toml: health.timout_seconds: unknown key",
                              "did you mean 'timeout_seconds'?"),
}


@pytest.mark.parametrize("fault", list(CONFIG_FAULTS))
def test_16_a_bad_environment_file_stops_the_deploy_before_anything_runs(sq: Sandbox, fault: str) -> None:
    broken, edit, cause, action = CONFIG_FAULTS[fault]
    before = snapshot(sq, "production")
    fetch_head = sq.config("production").source.workspace / ".git" / "FETCH_HEAD"
    fetched = fetch_head.stat().st_mtime_ns if fetch_head.exists() else None
    ledger = ledger_of(sq, "production")
    rows = len(list(ledger.all_releases("production")))
    with edited(sq, broken, edit):
        with pytest.raises(ConfigError) as caught:
            deploy("production", "v2", approvals=[])
    message = str(caught.value)
    assert "\n" not in message and cause in message and action in message, message
    assert len(list(ledger.all_releases("production"))) == rows, "a ledger row was written"
    assert (fetch_head.stat().st_mtime_ns if fetch_head.exists() else None) == fetched, "git fetch ran"
    assert snapshot(sq, "production") == before
    assert_healthy_on(sq, "production", sq.sha("v1"))
    assert_lock_free("production", ledger)


# --- #1 staging answers 503 -------------------------------------------------------------------------------


def test_01_staging_answering_503_aborts_a_production_deploy_before_any_change(sq: Sandbox) -> None:
    bring(sq, "staging", "v2")
    assert live_sha(sq, "production") == sq.sha("v1"), "this story starts with production on v1"
    before = snapshot(sq, "production")
    staging_url = sq.config("staging").service.base_url
    with maintenance(sq, "staging"):
        with pytest.raises(PreflightError) as caught:
            deploy("production", "v2", approvals=[])  # it stops before anyone is asked
    assert_one_line(str(caught.value), "verify staging", f"staging: {staging_url}/health answered HTTP 503",
                    "bring staging back to healthy (read its app log), then deploy again; nothing was changed")
    assert snapshot(sq, "production") == before
    assert_healthy_on(sq, "production", sq.sha("v1"))
    assert_lock_free("production", ledger_of(sq, "production"))
    release = last_release(sq, "production")
    assert_aborted(sq, "production", release, "verify staging")
    assert release.backup_tag is None and release.approvals == []
    assert release.error == str(caught.value)


def test_01_staging_going_down_during_the_approvals_is_caught_by_step_1(sq: Sandbox) -> None:
    """Neighbour of #1: staging was fine for the prerequisites and answers 503 once approvals are given."""
    bring(sq, "staging", "v2")
    assert live_sha(sq, "production") == sq.sha("v1"), "this story starts with production on v1"
    before = snapshot(sq, "production")
    ledger = ledger_of(sq, "production")
    staging_url = sq.config("staging").service.base_url
    down = threading.Event()

    def staging_down_while_approving() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if any(r.phase == "approvals" for r in ledger.running("production")):
                run_app_command(sq, "staging", sq.config("staging").service.maintenance_on_command)
                down.set()
                return
            time.sleep(0.01)

    saboteur = threading.Thread(target=staging_down_while_approving, daemon=True)
    saboteur.start()
    try:
        with pytest.raises(HealthCheckFailed) as caught:
            deploy("production", "v2")
    finally:
        saboteur.join(timeout=60)
        run_app_command(sq, "staging", sq.config("staging").service.maintenance_off_command)
    assert down.is_set()
    assert_one_line(str(caught.value), "check staging health (staging)", f"{staging_url}/health answered HTTP 503",
                    "the deploy does not continue")
    assert snapshot(sq, "production") == before
    assert_healthy_on(sq, "production", sq.sha("v1"))
    assert_lock_free("production", ledger)
    release = last_release(sq, "production")
    assert_aborted(sq, "production", release, "check staging health (staging)")
    assert release.backup_tag is None and len(release.approvals) == 2


# --- #6 / #5 migration 2 of 3 fails --------------------------------------------------------------------------


def deploy_migration_that_fails_midway(box: Sandbox) -> tuple[dict[str, Any], MigrationFailed]:
    bring(box, "production", "v2")
    bring(box, "staging", MIGRATION_FAILS_MIDWAY)  # staging's data has no duplicated URL: all three apply
    assert state(box, "staging")["revision"] == "f003"
    before = snapshot(box, "production")
    # The rehearsal would catch it on a copy of production's data; off, the live migration meets it.
    with edited(box, "production", without_rehearsal):
        with pytest.raises(MigrationFailed) as caught:
            deploy("production", MIGRATION_FAILS_MIDWAY)
    return before, caught.value


def assert_midway_failure_undone(box: Sandbox, before: dict[str, Any], error: MigrationFailed,
                                 database_error: str) -> tuple[Release, Release, list[str]]:
    after = snapshot(box, "production")
    release = last_release(box, "production")
    assert release.backup_tag is not None
    assert after.pop("backups") == [*before.pop("backups"), release.backup_tag], "the backup is kept"
    assert after == before and after["revision"] == "0002"
    assert_healthy_on(box, "production", box.sha("v2"))
    assert_lock_free("production", ledger_of(box, "production"))
    assert release.outcome == "rolled_back" and release.failed_step == "run migrations"
    assert [m["revision"] for m in release.migrations] == ["f001", "f002", "f003"]
    assert release.code_changed and release.migration_started and release.restored_at is not None
    assert_one_line(str(error), "run migrations", database_error, "production is rolled back automatically")
    assert release.error == str(error)
    manifest = box.config("production").backups.directory / release.backup_tag / "manifest.json"
    assert json.loads(manifest.read_text())["revision"] == "0002"
    undo, steps = rollback_of(box, "production", release)
    assert undo.outcome == "succeeded" and undo.target_sha == box.sha("v2")
    return release, undo, steps


def test_06_migration_2_of_3_fails_on_sqlite_and_the_backup_is_restored(sq: Sandbox) -> None:
    before, error = deploy_migration_that_fails_midway(sq)
    release, undo, steps = assert_midway_failure_undone(
        sq, before, error, "alembic upgrade failed: sqlalchemy.exc.IntegrityError: (sqlite3.IntegrityError) "
                           "UNIQUE constraint failed: jobs.source_url")
    # SQLite committed f001's ALTER before f002 failed: only the backup puts the schema back. The app
    # never ran the release: its processes serve again as soon as the database is back, then are renewed.
    assert "the schema may be half-changed" in plan_of(sq, "production", undo)
    assert steps == ["choose-rollback-plan", "stop-traffic", "restore-backup", "check-out-previous-release",
                     "check-health", "resume-traffic", "renew-application", "check-health", "run-critical-path-tests"]


# --- #7 a critical path fails after the migrations ----------------------------------------------------------


def test_07_a_critical_path_failing_after_the_migrations_is_undone_by_downgrade_then_code(sq: Sandbox) -> None:
    bring(sq, "production", "v2")
    bring(sq, "staging", EMAIL_BROKEN)  # staging has no relay to miss: its email path works
    before = snapshot(sq, "production")
    metrics_before = deployments_metric(sq, "production")
    with pytest.raises(ServiceError) as caught:
        deploy("production", EMAIL_BROKEN)
    assert_metrics_moved(sq, "production", metrics_before, "rolled_back")
    # Its canary catches it before the reload (the path through phase 3: tests/flows/test_rollback.py).
    assert_one_line(str(caught.value), "check canary (production)",
                    "email-integration: POST /api/email answered HTTP 500, expected 200",
                    "production still runs the previous release, which never stopped serving")
    after = snapshot(sq, "production")
    release = last_release(sq, "production")
    assert after.pop("backups") == [*before.pop("backups"), release.backup_tag]
    assert after == before and after["revision"] == "0002"
    assert_healthy_on(sq, "production", sq.sha("v2"))
    assert_lock_free("production", ledger_of(sq, "production"))
    assert release.outcome == "rolled_back" and release.failed_step == "check canary (production)"
    assert release.db_revision_after == "m001", "the migration had succeeded before the critical path failed"
    assert release.error == str(caught.value)
    undo, steps = rollback_of(sq, "production", release)
    assert undo.outcome == "succeeded"
    assert "downgrade the database to 0002" in plan_of(sq, "production", undo)
    assert steps == ["choose-rollback-plan", "stop-traffic", "downgrade-database", "check-out-previous-release",
                     "check-health", "resume-traffic", "renew-application", "check-health", "run-critical-path-tests"]


# --- health that appears and does not hold --------------------------------------------------------------


def without_canary(text_: str) -> str:
    """No [service.canary] (the release meets production's traffic unchecked, as many teams run), and
    the committed file's stability window rather than the tests' short one."""
    start = text_.index("[service.canary]")
    text_ = text_[:start] + text_[text_.index("\n[", start + 1) + 1:]
    return text_.replace("stable_seconds = 2", "stable_seconds = 6")


def test_a_release_whose_health_does_not_hold_fails_phase_3_and_is_rolled_back(sq: Sandbox) -> None:
    """200 for its first four health answers, then 503: phase 3 does not call it healthy on its first
    good answer; the stability window sees it relapse, and it is rolled back."""
    bring(sq, "production", "v2")
    bring(sq, "staging", HEALTH_FLAPS)  # staging has no source cache to expire
    before = snapshot(sq, "production")
    with edited(sq, "production", without_canary), pytest.raises(HealthCheckFailed) as caught:
        deploy("production", HEALTH_FLAPS)
    message = str(caught.value)
    base = sq.config("production").service.base_url
    assert_one_line(message, "check health (production)",
                    f"healthy at first, then {base}/api/health answered HTTP 503; unhealthy services: scraper: "
                    "RuntimeError: source cache expired",
                    "the release does not hold its health")
    release = last_release(sq, "production")
    assert release.outcome == "rolled_back" and release.failed_step == "check health (production)"
    after = snapshot(sq, "production")
    assert after.pop("backups") == [*before.pop("backups"), release.backup_tag]
    assert after == before
    assert_healthy_on(sq, "production", sq.sha("v2"))
    assert_lock_free("production", ledger_of(sq, "production"))
    undo, _ = rollback_of(sq, "production", release)
    assert undo.outcome == "succeeded"


# --- #8 the backup fails ---------------------------------------------------------------------------------


def assert_backup_failure_changed_nothing(box: Sandbox, before: dict[str, Any], error: BackupFailed,
                                          step: str, cause: str, action: str) -> None:
    assert_one_line(str(error), step, cause, action)
    assert snapshot(box, "production") == before
    assert not [name for name in backups(box, "production") if name.endswith(".partial")]
    assert_healthy_on(box, "production", before["sha"])
    assert_lock_free("production", ledger_of(box, "production"))
    release = last_release(box, "production")
    assert_aborted(box, "production", release, step)
    assert release.backup_tag is None and release.backup_manifest is None, "recorded as a backup"
    assert release.error == str(error)


def test_08_a_backup_directory_that_cannot_be_created_aborts_before_migrating_on_sqlite(sq: Sandbox) -> None:
    bring(sq, "production", "v2")
    bring(sq, "staging", EMAIL_BROKEN)
    before = snapshot(sq, "production")
    metrics_before = deployments_metric(sq, "production")
    config = sq.config("production")
    volume = config.backups.directory.parent / "backup-volume"
    volume.write_text("a regular file where the backup volume should be mounted\n")
    target = volume / "backups"
    try:
        with edited(sq, "production", lambda t: t.replace(f'directory = "{config.backups.directory}"',
                                                          f'directory = "{target}"')):
            with pytest.raises(BackupFailed) as caught:
                deploy("production", EMAIL_BROKEN)
    finally:
        volume.unlink()
    assert_backup_failure_changed_nothing(sq, before, caught.value, "backup database", "the backup could not be "
                                          "written (NotADirectoryError", "nothing was migrated")
    assert_metrics_moved(sq, "production", metrics_before, "aborted")


# --- #12 two deploys at once -------------------------------------------------------------------------------


def test_12_of_two_deploys_at_once_one_proceeds_and_the_other_names_it(sq: Sandbox) -> None:
    bring(sq, "staging", EMAIL_BROKEN)
    refs = (EMAIL_BROKEN_HOTFIX_A, EMAIL_BROKEN_HOTFIX_B)
    start = threading.Barrier(len(refs))
    outcomes: dict[str, tuple[str | BaseException, float]] = {}

    def run(ref: str) -> None:
        start.wait()
        began = time.monotonic()
        try:
            result: str | BaseException = deploy("staging", ref)
        except BaseException as exc:  # noqa: BLE001  (the test reports whatever it was)
            result = exc
        outcomes[ref] = (result, time.monotonic() - began)

    threads = [threading.Thread(target=run, args=(ref,), daemon=True) for ref in refs]
    # Whoever gets the lock holds it through an approval that is given only once the other has
    # ended: how long each thread takes to start cannot let the second one in after the first.
    with edited(sq, "staging", lambda t: t.replace("required_roles = []", 'required_roles = ["team-lead"]')):
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 60
        while not outcomes and time.monotonic() < deadline:
            time.sleep(0.1)
        approver = Approver([approval("Dana Whitfield", "team-lead")])
        approver.start()
        for thread in threads:
            thread.join(timeout=180)
        approver.answers.clear()
    assert len(outcomes) == 2, outcomes
    won = [ref for ref, (result, _) in outcomes.items() if isinstance(result, str)]
    lost = [ref for ref, (result, _) in outcomes.items() if isinstance(result, LockHeld)]
    assert len(won) == 1 and len(lost) == 1, outcomes
    winner, loser = won[0], lost[0]
    error, waited = outcomes[loser]
    assert_one_line(str(error), "acquire deploy lock (staging)", f"staging is held by run staging: {winner} (",
                    "wait for it to finish, or cancel it in the Prefect UI; nothing was changed")
    # The winner's run is renamed with its SHA once its ref is resolved, maybe before the loser looks.
    # Named by its run id and page too: two deploys of one ref would otherwise read the same name.
    rows = {r.ref: r for r in ledger_of(sq, "staging").releases("staging", limit=5)}
    holder_id = re.escape(str(rows[winner].flow_run_id))
    assert re.search(rf"held by run staging: {re.escape(winner)} (\({sq.sha(winner)[:12]}\) )?\(id {holder_id}, "
                     rf"http://127\.0\.0\.1:\d+/runs/flow-run/{holder_id}; since ", str(error)), str(error)
    assert str(rows[loser].flow_run_id) not in str(error)
    assert waited < outcomes[winner][1] and waited < 20, "the second deploy did not fail fast"
    assert live_sha(sq, "staging") == sq.sha(winner) and state(sq, "staging")["revision"] == "m001"
    assert_healthy_on(sq, "staging", sq.sha(winner))
    ledger = ledger_of(sq, "staging")
    assert_lock_free("staging", ledger)
    rows = {r.ref: r for r in ledger.releases("staging", limit=5)}
    assert rows[winner].outcome == "succeeded" and len(rows[winner].approvals) == 1
    assert_aborted(sq, "staging", rows[loser], "acquire deploy lock (staging)")
    assert rows[loser].lock_acquired_at is None and rows[loser].target_sha is None


# --- PostgreSQL: #8, #15, #5 -------------------------------------------------------------------------------


PG_DUMP_WRAPPER = """#!/bin/sh
# pg_dump, failing when it dumps the backup's archive (it reads an exported snapshot; the schema-only
# dump beside it does too, and works): the rehearsal's copy still works.
case "$*" in
  *--section=pre-data*) ;;
  *--snapshot*)
    echo "backup dump started" > {marker}
    {failure};;
esac
exec {real} "$@"
"""

PG_DUMP_FAULTS = {
    "disk full": ("""printf 'PGDMP half a dump'
      echo "pg_dump: error: could not write to output file: No space left on device" >&2
      exit 1""", "backup database", "pg_dump failed: pg_dump: error: could not write to output file: No space left "
                 "on device", "nothing was migrated"),
    # Neighbour: the tool says it succeeded, and the archive is not one; the restore that proves it fails.
    "unreadable archive": ("""printf 'PGDMP but not an archive'
      exit 0""", "verify backup", "the archive could not be restored: pg_restore: error:", "do not deploy"),
}


@pytest.mark.parametrize("fault", list(PG_DUMP_FAULTS))
def test_08_a_failed_pg_dump_aborts_before_migrating_and_leaves_no_partial_backup(
        pg: Sandbox, production_secret: ProductionSecret, fault: str, tmp_path: Path,
        capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> None:
    failure, step, cause, action = PG_DUMP_FAULTS[fault]
    bring(pg, "staging", "v2")
    assert live_sha(pg, "production") == pg.sha("v1"), "this story starts with production on v1"
    before = snapshot(pg, "production")
    config = pg.config("production")
    marker = tmp_path / "dump-started"
    tool = tmp_path / "pg_dump"
    tool.write_text(PG_DUMP_WRAPPER.format(backups=config.backups.directory, marker=marker, failure=failure,
                                           real=shutil.which("pg_dump")))
    tool.chmod(0o755)
    with edited(pg, "production", lambda t: t.replace("[backups]\n", f'[backups]\npg_dump = "{tool}"\n', 1)):
        with pytest.raises(BackupFailed) as caught:
            deploy("production", "v2")
    assert marker.read_text().strip() == "backup dump started", "pg_dump never dumped for the backup"
    assert_backup_failure_changed_nothing(pg, before, caught.value, step, cause, action)
    assert_secret_nowhere(pg, production_secret, capfd, caplog)


def test_a_table_lock_fails_the_postgres_deploy_within_the_bound_naming_the_holder(pg: Sandbox) -> None:
    """Another session holds `LOCK TABLE jobs IN ACCESS EXCLUSIVE MODE` in an open transaction when a
    deploy starts: the rehearsal's copy waits for it, says so, and the deploy stops within the lock
    bound with one line naming the holder; nothing changed, the deploy lock is free, and no session of
    ours is left in the database."""
    bring(pg, "staging", "v2")
    assert live_sha(pg, "production") == pg.sha("v1"), "this story starts with production on v1"
    before = snapshot(pg, "production")
    config = pg.config("production")
    url = resolve_app_environment(config)[config.database.app_variable]
    holder = create_engine(url, connect_args={"application_name": "reporting-job"})
    with holder.connect() as conn:
        conn.execute(text("LOCK TABLE jobs IN ACCESS EXCLUSIVE MODE"))
        pid = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
        started = time.monotonic()
        with pytest.raises(PreflightError) as caught:
            deploy("production", "v2", approvals=[])  # it stops before anyone is asked
        waited = time.monotonic() - started
        conn.rollback()
    holder.dispose()
    assert_one_line(str(caught.value), "test migrations",
                    f"a lock on jobs held by session {pid} (reporting-job, user ",
                    "end that session or wait for it to finish, then run again; nothing was changed")
    assert waited < 120, f"the deploy waited {waited:.0f} s on a lock bounded at {config.database.lock_timeout_ms} ms"
    assert snapshot(pg, "production") == before
    assert_healthy_on(pg, "production", pg.sha("v1"))
    ledger = ledger_of(pg, "production")
    assert_lock_free("production", ledger)
    assert_aborted(pg, "production", last_release(pg, "production"), "test migrations")
    engine = create_engine(url)
    with engine.connect() as conn:
        left = conn.execute(text("SELECT application_name FROM pg_stat_activity WHERE datname = current_database() "
                                 "AND application_name LIKE 'deploy-%' AND pid <> pg_backend_pid()")).scalars().all()
    engine.dispose()
    assert left == [], f"sessions of the deploy left behind: {left}"


def test_15_production_database_password_appears_nowhere(
        pg: Sandbox, production_secret: ProductionSecret,
        capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> None:
    config = pg.config("production")
    pid = running_pid(config)
    assert pid is not None and production_secret.password in Path(f"/proc/{pid}/environ").read_text(errors="replace"), \
        "production must run with the password, or this test proves nothing"
    bring(pg, "production", "v2")
    release = last_release(pg, "production")
    assert release.outcome == "succeeded" and release.backup_manifest is not None
    assert f"{production_secret.role}:***@" in release.backup_manifest["source"]
    with create_engine(resolve_app_environment(config)[config.database.app_variable]).connect() as conn:
        users = set(conn.execute(text("SELECT usename FROM pg_stat_activity WHERE datname = current_database()"))
                    .scalars())
    assert production_secret.role in users
    assert_secret_nowhere(pg, production_secret, capfd, caplog)


def test_05_migration_2_of_3_fails_on_postgres_and_nothing_is_committed(
        pg: Sandbox, production_secret: ProductionSecret,
        capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> None:
    before, error = deploy_migration_that_fails_midway(pg)
    release, undo, steps = assert_midway_failure_undone(
        pg, before, error, 'could not create unique index "ux_jobs_source_url"')
    # One transaction for the whole upgrade: PostgreSQL rolled f001 back with f002, so no restore.
    assert "one transaction that PostgreSQL rolled back" in plan_of(pg, "production", undo)
    assert steps == ["choose-rollback-plan", "stop-traffic", "verify-database-revision", "check-out-previous-release",
                     "check-health", "resume-traffic", "renew-application", "check-health", "run-critical-path-tests"]
    assert_secret_nowhere(pg, production_secret, capfd, caplog)


# --- #15 where a secret could show up -------------------------------------------------------------------------


def assert_secret_nowhere(box: Sandbox, secret: ProductionSecret, capfd: pytest.CaptureFixture[str],
                          caplog: pytest.LogCaptureFixture) -> None:
    password = secret.password
    places = list(exposed_text(box, secret.prefect_server))
    kinds = {where.split(" ", 2)[0] + " " + where.split(" ", 2)[1] for where, _ in places}
    assert {"Prefect log", "artifact deploy-staging-summary", "flow run", "task run", "Prefect server",
            "state file", "backup manifest", "startup log"} <= kinds, sorted(kinds)
    found = [f"{where}: ...{text_[max(0, text_.find(password) - 80):text_.find(password) + 40]}..."
             for where, text_ in places if password in text_]
    captured = capfd.readouterr()
    found += [f"captured {name}" for name, text_ in (("stdout", captured.out), ("stderr", captured.err),
                                                     ("log records", caplog.text)) if password in text_]
    seen, hits = secret.argv.report()
    found += [f"argv: {argv[:200]}" for argv in hits]
    assert not found, "\n".join(found)
    # The sampler is alive and fast enough to see short-lived children.
    assert {"git", "pg_dump", "pg_restore"} <= seen, sorted(seen)


def exposed_text(box: Sandbox, prefect_server: Stack) -> Iterator[tuple[str, str]]:
    """Every place a deploy writes to that someone other than the app may read."""
    from prefect.client.orchestration import get_client
    from prefect.logging.handlers import APILogHandler
    from prefect.settings import PREFECT_LOCAL_STORAGE_PATH

    APILogHandler().flush()
    with get_client(sync_client=True) as client:
        for offset in range(0, 100_000, 200):
            logs = client.read_logs(limit=200, offset=offset)
            yield from ((f"Prefect log of run {log.flow_run_id}", log.message) for log in logs)
            if len(logs) < 200:
                break
        for offset in range(0, 100_000, 200):
            artifacts = client.read_artifacts(limit=200, offset=offset)
            for artifact in artifacts:
                yield (f"artifact {artifact.key}", json.dumps(artifact.data, default=str)
                       + str(artifact.description))
            if len(artifacts) < 200:
                break
        for offset in range(0, 100_000, 200):
            runs = client.read_flow_runs(limit=200, offset=offset)
            for run in runs:
                yield (f"flow run {run.name}", json.dumps(run.parameters, default=str) + run.name
                       + str(run.state.message if run.state else ""))
            if len(runs) < 200:
                break
        for offset in range(0, 100_000, 200):
            tasks = client.read_task_runs(limit=200, offset=offset)
            for task in tasks:
                yield (f"task run {task.name}", task.name + json.dumps(task.task_inputs, default=str)
                       + str(task.state.message if task.state else ""))
            if len(tasks) < 200:
                break
    # Events, states and everything else the server keeps.
    for path in prefect_server.home.glob("prefect.db*"):
        yield f"Prefect server database {path.name}", path.read_bytes().decode("latin-1")
    if prefect_server.database_url:
        server_db = make_url(prefect_server.database_url)
        dump = subprocess.run(["pg_dump", "--host", server_db.host or "127.0.0.1", "--port", str(server_db.port or 5432),
                               "--username", server_db.username or "postgres", "--no-password", "--data-only",
                               server_db.database or ""], capture_output=True, text=True, timeout=120, check=True)
        yield "Prefect server database (pg_dump)", dump.stdout
    storage = Path(PREFECT_LOCAL_STORAGE_PATH.value())
    for path in storage.rglob("*") if storage.exists() else []:
        if path.is_file():
            yield f"Prefect result storage {path}", path.read_bytes().decode("latin-1")
    for env in ("staging", "production"):
        config = box.config(env)
        for path in config.state_dir.iterdir():
            if path.is_file():  # the ledger and its WAL; worktrees hold release code only
                yield f"state file {path}", path.read_bytes().decode("latin-1")
        for path in config.backups.directory.glob("*/manifest.json"):
            yield f"backup manifest {path}", path.read_text()
        yield f"startup log of {env}", config.service.startup_log.read_text(errors="replace")
