"""FAULTS.md on real sandboxes: each fault injected into a whole deploy, then every invariant checked.

    PostgreSQL, production's URL carrying a password throughout
    #8   pg_dump fails on a full disk; also writes an unreadable archive  abort, no partial backup left
         a table locked by another session when the deploy starts        abort within the bound, holder named
    #15  a succeeded deploy (and the failures around it)                the password appears nowhere
    #5   migration 2 of 3 fails                                         nothing committed, code reverted

One sandbox, shared by the tests in the order above; each test
brings the environments to the state it starts from (`bring`), so it also runs on its own.
The failing releases are committed into the sandbox's origin by tests/faults/releases.py.
The PostgreSQL sandbox runs production as a role with a password for all its tests, and a thread
samples every process's argv meanwhile, so #15 covers deploys that abort, fail and succeed.
The SQLite rows are tests/faults/test_faults.py; the helpers both drive with are tests/faults/driving.py.
"""

from __future__ import annotations

import json
import re
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import make_url

from deployments.errors import BackupFailed, PreflightError
from deployments.secrets import resolve_app_environment
from sample_app.sandbox import postgres_database_name
from tasks.process_state import running_pid
from deployctl.stack import Stack
from tests.faults.driving import (
    assert_aborted,
    assert_backup_failure_changed_nothing,
    assert_midway_failure_undone,
    assert_one_line,
    bring,
    deploy,
    deploy_migration_that_fails_midway,
    edited,
    fault_sandbox,
    ledger_of,
    live_sha,
    plan_of,
    restart_app,
    snapshot,
)
from tests.flows.conftest import Sandbox
from tests.flows.invariants import assert_healthy_on, assert_lock_free, last_release

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_server")]


# --- sandboxes ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def postgres_sandbox(tmp_path_factory: pytest.TempPathFactory, postgres_admin_url: str) -> Iterator[Sandbox]:
    yield from fault_sandbox(tmp_path_factory, "postgres")


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
    owned.dispose()  # no superuser session may stay in production's database: a restore ends the others
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
    # The sandbox lives until the module ends; the flows find it through this variable.
    monkeypatch.setenv("DEPLOY_ENVIRONMENTS_DIR", str(postgres_sandbox.environments))
    return postgres_sandbox


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


# --- a rollback by hand that would discard rows written since the backup ---------------------------------------


def test_a_rollback_by_hand_refuses_a_restore_over_rows_written_since_and_restores_when_allowed(pg: Sandbox) -> None:
    """ONE_WAY's migration has no downgrade: undoing it means the backup. Rows written since (a user's
    applications... here outbox rows and an edited job) make a rollback by hand refuse before anything
    changes, measured against the backup restored into a scratch database; allow_data_loss restores."""
    from deployments.errors import InvalidInput
    from deployments.secrets import resolve_database_url
    from tests.faults.driving import rollback
    from tests.faults.releases import ONE_WAY

    bring(pg, "production", ONE_WAY)
    release = last_release(pg, "production")
    assert release.outcome == "succeeded" and release.db_revision_after == "w001"
    from sqlalchemy.pool import NullPool

    url = resolve_database_url(pg.config("production"))
    engine = create_engine(url, poolclass=NullPool)  # no session of ours stays open: a restore ends them
    with engine.begin() as conn:
        outbox_before = conn.execute(text("SELECT count(*) FROM outbox")).scalar_one()
        for n in range(4):
            conn.execute(text("INSERT INTO outbox (recipient, subject, body, status, created_at) VALUES "
                              "(:r, 'Interview', 'Tuesday?', 'queued', now())"), {"r": f"user{n}@example.com"})
        conn.execute(text("UPDATE jobs SET notes = 'call back' WHERE id = (SELECT min(id) FROM jobs)"))
    before = snapshot(pg, "production")
    with pytest.raises(InvalidInput) as caught:
        rollback("production", reason="test: undo one-way")
    cause = caught.value.cause
    # The note is in a column the backup lacks; the outbox counts ours and what the deploy's own critical
    # paths wrote after the backup.
    assert re.search(r"would discard \d+ rows written since .*jobs \((\d+ inserted, )?1 updated\)", cause), cause
    found = re.search(r"outbox \((\d+) inserted\)", cause)
    assert found and int(found.group(1)) >= 4, cause
    assert "nothing was changed. Run rollback/production again with allow_data_loss = true" in caught.value.action
    assert snapshot(pg, "production") == before, "refused before anything changed: no maintenance, no restore"
    assert last_release(pg, "production").id == release.id and ledger_of(pg, "production").get(release.id).outcome \
        == "succeeded", "the release it would have undone keeps its outcome"
    assert_healthy_on(pg, "production", pg.sha(ONE_WAY))

    # Allowed: restored, and production is back on the release before ONE_WAY.
    rollback("production", reason="test: undo one-way, the rows are resent", allow_data_loss=True)
    assert ledger_of(pg, "production").get(release.id).outcome == "rolled_back"
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM outbox")).scalar_one() <= outbox_before
        assert "notes" not in {c["name"] for c in inspect(conn).get_columns("jobs")}
    engine.dispose()
    assert_healthy_on(pg, "production", str(release.previous_sha))
