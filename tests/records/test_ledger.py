"""The release ledger on real SQLite files (shared between processes) and real PostgreSQL; its schema
made and kept by its own migrations, from an empty directory and from ledgers the older code made."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import MetaData, create_engine, inspect

from records import ledger_migrations
from records.ledger import OUTCOMES, TERMINAL, Base, Ledger

PROJECT = Path(__file__).resolve().parents[2]
SHA1, SHA2, SHA3 = "1" * 40, "2" * 40, "3" * 40


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Ledger]:
    url = f"sqlite:///{tmp_path / 'ledger.db'}" if request.param == "sqlite" else (
        request.getfixturevalue("postgres_database"))
    book = Ledger(url)
    yield book
    book.engine.dispose()


def deploy(book: Ledger, outcome: str | None, environment: str = "production", **fields: object) -> int:
    release_id = book.open_release(environment=environment, ref=fields.pop("ref", "main"), **fields).id
    if outcome is not None:
        book.finish(release_id, outcome)
    return release_id


def test_a_release_opens_running_and_is_updated_as_it_goes(ledger: Ledger) -> None:
    release = ledger.open_release(environment="production", flow_run_id="run-1", flow_run_name="brave-otter",
                                  ref="v2", reason="salary insights")
    assert isinstance(release.id, int)
    assert (release.outcome, release.phase, release.dry_run, release.approvals) == ("running", "prerequisites",
                                                                                    False, [])
    assert release.started_at is not None and release.finished_at is None
    ledger.update(release.id, target_sha=SHA2, previous_sha=SHA1, phase="execution", code_changed=True,
                  timings={"prerequisites": 3.5}, approvals=[{"approver": "Ada", "role": "team-lead"}],
                  backup_manifest={"tag": "pre-deployment-20260105-100000", "row_counts": {"jobs": 200}},
                  commit_time=datetime(2024, 3, 8, 9, 0, tzinfo=timezone.utc))
    stored = ledger.get(release.id)
    assert (stored.target_sha, stored.previous_sha, stored.phase, stored.code_changed) == (SHA2, SHA1, "execution",
                                                                                           True)
    assert stored.timings == {"prerequisites": 3.5}
    assert stored.approvals == [{"approver": "Ada", "role": "team-lead"}]
    assert stored.backup_manifest == {"tag": "pre-deployment-20260105-100000", "row_counts": {"jobs": 200}}
    assert ledger.by_flow_run("run-1").id == release.id  # type: ignore[union-attr]
    assert ledger.by_flow_run("run-2") is None


@pytest.mark.parametrize("outcome", sorted(TERMINAL))
def test_finish_sets_a_terminal_outcome(ledger: Ledger, outcome: str) -> None:
    release_id = deploy(ledger, None)
    ledger.finish(release_id, outcome, step="run migrations", error="run migrations: alembic upgrade failed")
    stored = ledger.get(release_id)
    assert stored.outcome == outcome and stored.finished_at is not None
    assert stored.failed_step == "run migrations"
    assert stored.error == "run migrations: alembic upgrade failed"


@pytest.mark.parametrize("outcome", ["running", "done", "SUCCEEDED", ""])
def test_finish_refuses_an_outcome_that_is_not_terminal(ledger: Ledger, outcome: str) -> None:
    release_id = deploy(ledger, None)
    with pytest.raises(ValueError, match="is not a terminal outcome"):
        ledger.finish(release_id, outcome)
    assert ledger.get(release_id).outcome == "running"


def test_outcomes() -> None:
    assert TERMINAL == {"succeeded", "failed", "aborted", "rolled_back", "rollback_failed", "noop"}
    assert set(OUTCOMES) == TERMINAL | {"running"}


def test_finish_without_a_step_keeps_what_was_recorded(ledger: Ledger) -> None:
    release_id = deploy(ledger, None)
    ledger.update(release_id, failed_step="check health", error="check health: HTTP 503")
    ledger.finish(release_id, "rolled_back")
    stored = ledger.get(release_id)
    assert (stored.outcome, stored.failed_step, stored.error) == ("rolled_back", "check health",
                                                                  "check health: HTTP 503")


def test_last_succeeded_is_the_last_real_successful_deploy(ledger: Ledger) -> None:
    good = deploy(ledger, "succeeded", target_sha=SHA1)
    deploy(ledger, "failed", target_sha=SHA2)
    deploy(ledger, "succeeded", target_sha=SHA2, dry_run=True)
    deploy(ledger, "succeeded", target_sha=SHA1, rollback_of=good)  # a rollback's own row
    deploy(ledger, "aborted", target_sha=SHA3)
    deploy(ledger, "rolled_back", target_sha=SHA3)
    deploy(ledger, "noop", target_sha=SHA1)
    deploy(ledger, None, target_sha=SHA3)
    deploy(ledger, "succeeded", environment="staging", target_sha=SHA3)
    assert ledger.last_succeeded("production").id == good  # type: ignore[union-attr]
    later = deploy(ledger, "succeeded", target_sha=SHA2)
    assert ledger.last_succeeded("production").id == later  # type: ignore[union-attr]
    assert ledger.last_succeeded("production", before_id=later).id == good  # type: ignore[union-attr]
    assert ledger.last_succeeded("production", before_id=good) is None
    assert ledger.last_succeeded("nowhere") is None


def test_running_lists_unfinished_releases_of_one_environment(ledger: Ledger) -> None:
    first = deploy(ledger, None)
    deploy(ledger, "failed")
    second = deploy(ledger, None)
    deploy(ledger, None, environment="staging")
    assert [r.id for r in ledger.running("production")] == [first, second]
    ledger.finish(first, "aborted")
    assert [r.id for r in ledger.running("production")] == [second]


def test_releases_newest_first_without_rollback_rows_and_dry_runs_on_request(ledger: Ledger) -> None:
    one = deploy(ledger, "succeeded")
    dry = deploy(ledger, "noop", dry_run=True)
    deploy(ledger, "succeeded", rollback_of=one)
    three = deploy(ledger, "failed")
    assert [r.id for r in ledger.releases("production")] == [three, one]
    assert [r.id for r in ledger.releases("production", include_dry_runs=True)] == [three, dry, one]
    assert [r.id for r in ledger.releases("production", limit=1)] == [three]
    assert len(list(ledger.all_releases("production"))) == 4


def test_steps_are_recorded_in_order_with_durations(ledger: Ledger) -> None:
    release_id = deploy(ledger, None)
    backup = ledger.step_started(release_id, "backup-database")
    ledger.step_finished(backup, "completed", {"tag": "pre-deployment-20260105-100000", "bytes": 4096})
    migrate = ledger.step_started(release_id, "run-migrations")
    ledger.step_finished(migrate, "failed", "run migrations: alembic upgrade failed")
    health = ledger.step_started(release_id, "check-health")
    other = deploy(ledger, None)
    ledger.step_started(other, "check-staging-health")
    steps = ledger.steps(release_id)
    assert [(s.name, s.status) for s in steps] == [("backup-database", "completed"), ("run-migrations", "failed"),
                                                   ("check-health", "running")]
    assert steps[0].detail == '{"tag": "pre-deployment-20260105-100000", "bytes": 4096}'
    assert steps[1].detail == "run migrations: alembic upgrade failed"
    assert all(s.seconds is not None and s.seconds >= 0 for s in steps[:2])
    assert steps[2].seconds is None and health > migrate


def test_two_ledgers_on_one_sqlite_file_see_each_others_writes(tmp_path: Path) -> None:
    deploying = Ledger.for_state_dir(tmp_path / "state")
    rolling_back = Ledger(deploying.url)  # an engine of its own, as another process has
    try:
        release_id = deploying.open_release(environment="production", ref="v3").id
        assert [r.id for r in rolling_back.running("production")] == [release_id]
        rolling_back.finish(release_id, "rolled_back", step="check health", error="HTTP 503")
        assert deploying.get(release_id).outcome == "rolled_back"
        assert deploying.running("production") == []
    finally:
        deploying.engine.dispose()
        rolling_back.engine.dispose()
    mode = sqlite3.connect(tmp_path / "state" / "ledger.db").execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_another_process_sees_and_finishes_a_release(tmp_path: Path) -> None:
    ledger = Ledger.for_state_dir(tmp_path / "state")
    try:
        release_id = ledger.open_release(environment="production", ref="v4").id
        step = ledger.step_started(release_id, "run-migrations")
        # What a rollback started as its own run does to the deploy's release.
        script = (
            "import sys\nfrom records.ledger import Ledger\n"
            "book = Ledger(sys.argv[1])\n"
            "running = book.running('production')\n"
            "book.step_finished(int(sys.argv[3]), 'failed', 'killed')\n"
            "book.finish(running[0].id, 'rolled_back', step='run-migrations', error='flow run crashed')\n"
            "print(running[0].id, running[0].ref)\n"
        )
        result = subprocess.run([sys.executable, "-c", script, ledger.url, str(release_id), str(step)], cwd=PROJECT,
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        assert result.stdout.split() == [str(release_id), "v4"]
        stored = ledger.get(release_id)
        assert (stored.outcome, stored.failed_step, stored.error) == ("rolled_back", "run-migrations",
                                                                      "flow run crashed")
        assert [(s.name, s.status, s.detail) for s in ledger.steps(release_id)] == [
            ("run-migrations", "failed", "killed")]
    finally:
        ledger.engine.dispose()


# The schema of the first ledger, before any column was added to it: what a state directory kept
# since then may still hold, with whichever columns the code of each later open added.
FIRST_LEDGER_SCHEMA = """
CREATE TABLE releases (
    id INTEGER NOT NULL, environment VARCHAR(40) NOT NULL, flow_run_id VARCHAR(64),
    flow_run_name VARCHAR(200), ref VARCHAR(200) NOT NULL, reason TEXT NOT NULL, dry_run BOOLEAN NOT NULL,
    target_sha VARCHAR(40), previous_sha VARCHAR(40), commit_time DATETIME, db_revision_before VARCHAR(64),
    db_revision_after VARCHAR(64), backup_tag VARCHAR(80), backup_manifest JSON, approvals JSON NOT NULL,
    phase VARCHAR(40) NOT NULL, code_changed BOOLEAN NOT NULL, migration_started BOOLEAN NOT NULL,
    outcome VARCHAR(20) NOT NULL, failed_step VARCHAR(80), error TEXT, timings JSON NOT NULL,
    started_at DATETIME NOT NULL, finished_at DATETIME, restored_at DATETIME, rollback_of INTEGER,
    PRIMARY KEY (id)
);
CREATE INDEX ix_releases_environment ON releases (environment);
CREATE INDEX ix_releases_flow_run_id ON releases (flow_run_id);
CREATE INDEX ix_releases_outcome ON releases (outcome);
CREATE TABLE steps (
    id INTEGER NOT NULL, release_id INTEGER NOT NULL, name VARCHAR(80) NOT NULL, status VARCHAR(20) NOT NULL,
    detail TEXT NOT NULL, started_at DATETIME NOT NULL, finished_at DATETIME, PRIMARY KEY (id)
);
CREATE INDEX ix_steps_release_id ON steps (release_id);
INSERT INTO releases (id, environment, flow_run_id, ref, reason, dry_run, target_sha, previous_sha, approvals,
                      phase, code_changed, migration_started, outcome, timings, started_at, finished_at)
VALUES (1, 'production', 'run-1', 'v1', 'first release', 0, '1111111111111111111111111111111111111111', NULL,
        '[{"approver": "Ada", "role": "team-lead"}]', 'verification', 1, 1, 'succeeded',
        '{"prerequisites": 3.5}', '2026-01-05 10:00:00.000000', '2026-01-05 10:04:00.000000');
INSERT INTO steps (release_id, name, status, detail, started_at, finished_at)
VALUES (1, 'backup-database', 'completed', '{"tag": "pre-deployment-20260105-100000"}',
        '2026-01-05 10:01:00.000000', '2026-01-05 10:01:30.000000');
"""


def sqlite_schema(path: Path) -> list[tuple[str, str, object]]:
    """Every table's columns (name, type, not null, default, key) and every index's columns, in a form
    that does not depend on the order columns were added in (a migration's ADD COLUMN appends)."""
    with sqlite3.connect(path) as conn:
        objects = list(conn.execute("SELECT type, name FROM sqlite_master"))
        shape: list[tuple[str, str, object]] = []
        for kind, name in objects:
            if kind == "table":
                shape.append((kind, name, sorted(tuple(row[1:]) for row in conn.execute(f"PRAGMA table_info('{name}')"))))
            elif kind == "index":
                shape.append((kind, name, [row[2] for row in conn.execute(f"PRAGMA index_info('{name}')")]))
        return sorted(shape, key=lambda item: (item[0], item[1]))


def version(path: Path) -> list[str]:
    with sqlite3.connect(path) as conn:
        return [row[0] for row in conn.execute(f"SELECT version_num FROM {ledger_migrations.VERSION_TABLE}")]


@contextmanager
def migration_context(ledger: Ledger) -> Iterator[MigrationContext]:
    with ledger.engine.connect() as connection:
        yield MigrationContext.configure(connection, opts={"version_table": ledger_migrations.VERSION_TABLE})


def test_a_new_ledger_is_at_head_which_names_the_newest_revision(ledger: Ledger) -> None:
    with migration_context(ledger) as context:
        script = ScriptDirectory.from_config(ledger_migrations.config(context.connection))
        assert script.get_heads() == [ledger_migrations.HEAD]
        assert context.get_current_revision() == ledger_migrations.HEAD


def test_the_migrations_make_the_schema_the_models_describe(ledger: Ledger) -> None:
    with migration_context(ledger) as context:
        assert compare_metadata(context, Base.metadata) == []


def test_a_new_ledger_is_made_by_its_migrations_as_the_models_would_make_it(tmp_path: Path) -> None:
    Ledger.for_state_dir(tmp_path / "state")
    by_the_models = create_engine(f"sqlite:///{tmp_path / 'models.db'}")
    Base.metadata.create_all(by_the_models)
    by_the_models.dispose()
    migrated = [row for row in sqlite_schema(tmp_path / "state" / "ledger.db")
                if ledger_migrations.VERSION_TABLE not in row[1]]
    assert migrated == sqlite_schema(tmp_path / "models.db")
    assert version(tmp_path / "state" / "ledger.db") == [ledger_migrations.HEAD]


def test_a_ledger_made_before_migrations_keeps_its_rows_and_gains_the_newer_columns(tmp_path: Path) -> None:
    (tmp_path / "state").mkdir()
    with sqlite3.connect(tmp_path / "state" / "ledger.db") as conn:
        conn.executescript(FIRST_LEDGER_SCHEMA)
        conn.execute("DROP INDEX ix_releases_outcome")  # made again, like the columns
    ledger = Ledger.for_state_dir(tmp_path / "state")
    try:
        kept = ledger.get(1)
        assert (kept.ref, kept.target_sha, kept.outcome, kept.approvals, kept.timings) == (
            "v1", SHA1, "succeeded", [{"approver": "Ada", "role": "team-lead"}], {"prerequisites": 3.5})
        assert (kept.watch, kept.lock_lease_id) == (None, None)
        assert ledger.last_succeeded("production").id == 1  # type: ignore[union-attr]
        assert [(s.name, s.status, s.seconds) for s in ledger.steps(1)] == [
            ("backup-database", "completed", 30.0)]
        later = deploy(ledger, "succeeded", ref="v2", checks=[{"name": "health"}], lock_lease_id="lease-1",
                       watch={"verdict": "healthy"})
        assert ledger.get(later).watch == {"verdict": "healthy"}
        assert [r.id for r in ledger.releases("production")] == [later, 1]
        columns = {c["name"] for c in inspect(ledger.engine).get_columns("releases")}
        assert columns == set(Base.metadata.tables["releases"].columns.keys())
        indexes = {i["name"] for i in inspect(ledger.engine).get_indexes("releases")}
        assert indexes == {index.name for index in Base.metadata.tables["releases"].indexes}
    finally:
        ledger.engine.dispose()
    assert version(tmp_path / "state" / "ledger.db") == [ledger_migrations.HEAD]


def baseline_metadata() -> MetaData:
    """The tables as the last code before the ledger had migrations made them (revision 0001's)."""
    engine = create_engine("sqlite://")
    with engine.connect() as connection:
        script = ScriptDirectory.from_config(ledger_migrations.config(connection))
        return script.get_revision(ledger_migrations.BASELINE).module.metadata  # type: ignore[no-any-return]


def test_a_ledger_the_last_code_before_migrations_made_is_stamped_then_upgraded(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'ledger.db'}")
    baseline_metadata().create_all(engine)
    engine.dispose()
    Ledger(f"sqlite:///{tmp_path / 'ledger.db'}").engine.dispose()
    models = create_engine(f"sqlite:///{tmp_path / 'models.db'}")
    Base.metadata.create_all(models)
    models.dispose()
    after = sqlite_schema(tmp_path / "ledger.db")
    assert [row for row in after if ledger_migrations.VERSION_TABLE not in row[1]] == sqlite_schema(tmp_path / "models.db")
    assert version(tmp_path / "ledger.db") == [ledger_migrations.HEAD]


@pytest.mark.postgres
def test_a_ledger_made_before_migrations_on_postgresql_gains_the_column_it_lacks(postgres_database: str) -> None:
    engine = create_engine(postgres_database)
    baseline_metadata().create_all(engine)
    with engine.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE releases DROP COLUMN watch")
        conn.exec_driver_sql("INSERT INTO releases (environment, ref, reason, dry_run, approvals, phase, code_changed,"
                             " migration_started, outcome, timings, migrations, checks, started_at) VALUES"
                             " ('production', 'v1', '', false, '[]', 'execution', true, false, 'succeeded', '{}',"
                             " '[]', '[]', now())")
    engine.dispose()
    ledger = Ledger(postgres_database)
    try:
        assert [(r.ref, r.watch) for r in ledger.releases("production")] == [("v1", None)]
        with migration_context(ledger) as context:
            assert context.get_current_revision() == ledger_migrations.HEAD
            assert compare_metadata(context, Base.metadata) == []
    finally:
        ledger.engine.dispose()


def test_opening_a_ledger_again_changes_nothing(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    first = Ledger(url)
    release_id = deploy(first, "succeeded")
    first.engine.dispose()
    schema = sqlite_schema(tmp_path / "ledger.db")
    for _ in range(2):
        again = Ledger(url)
        assert again.get(release_id).outcome == "succeeded"
        again.engine.dispose()
    assert sqlite_schema(tmp_path / "ledger.db") == schema
    assert version(tmp_path / "ledger.db") == [ledger_migrations.HEAD]


OPENER = """
import sys, time
from pathlib import Path
from records.ledger import Ledger
state, go = Path(sys.argv[1]), Path(sys.argv[2])
(state.parent / f"ready-{sys.argv[3]}").touch()
while not go.exists():
    time.sleep(0.005)
Ledger.for_state_dir(state).open_release(environment="production", ref=f"v{sys.argv[3]}")
"""


@pytest.mark.parametrize("made_by", ["nothing", "the first ledger"])
def test_processes_opening_one_ledger_at_once_all_succeed(tmp_path: Path, made_by: str) -> None:
    state, go = tmp_path / "state", tmp_path / "go"
    if made_by == "the first ledger":
        state.mkdir()
        with sqlite3.connect(state / "ledger.db") as conn:
            conn.executescript(FIRST_LEDGER_SCHEMA)
    openers = [subprocess.Popen([sys.executable, "-c", OPENER, str(state), str(go), str(n)], cwd=PROJECT,
                                stderr=subprocess.PIPE, text=True) for n in range(4)]
    try:
        deadline = time.monotonic() + 120
        while len(list(tmp_path.glob("ready-*"))) < len(openers) and time.monotonic() < deadline:
            time.sleep(0.01)
        go.touch()  # all of them imported and waiting: they open at once
        problems = [opener.communicate(timeout=120)[1] for opener in openers]
    finally:
        for opener in openers:
            opener.kill()
    assert [opener.returncode for opener in openers] == [0] * len(openers), problems
    with sqlite3.connect(state / "ledger.db") as conn:
        refs = sorted(row[0] for row in conn.execute("SELECT ref FROM releases"))
    assert refs == sorted({"nothing": [], "the first ledger": ["v1"]}[made_by] + ["v0", "v1", "v2", "v3"])
    assert version(state / "ledger.db") == [ledger_migrations.HEAD]


def test_a_process_has_one_ledger_per_state_directory(tmp_path: Path) -> None:
    first = Ledger.for_state_dir(tmp_path / "state")
    assert Ledger.for_state_dir(tmp_path / "state") is first
    assert Ledger.for_state_dir(tmp_path / "elsewhere" / ".." / "state") is first
    assert Ledger.for_state_dir(tmp_path / "other") is not first
    found: list[Ledger] = []
    threads = [threading.Thread(target=lambda: found.append(Ledger.for_state_dir(tmp_path / "new")))
               for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(found) == 8 and all(ledger is found[0] for ledger in found)


def test_a_ledger_whose_file_was_removed_is_opened_afresh(tmp_path: Path) -> None:
    state = tmp_path / "state"
    gone = Ledger.for_state_dir(state)
    deploy(gone, "succeeded", ref="v1")
    shutil.rmtree(state)  # with the ledger's pooled connection still open on it
    fresh = Ledger.for_state_dir(state)
    assert fresh is not gone
    assert fresh.releases("production") == []
    deploy(fresh, "succeeded", ref="v2")
    with sqlite3.connect(state / "ledger.db") as conn:
        assert conn.execute("SELECT ref FROM releases").fetchall() == [("v2",)]
    assert Ledger.for_state_dir(state) is fresh


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_opens_the_ledger_on_connections_of_its_own(tmp_path: Path) -> None:
    parents = Ledger.for_state_dir(tmp_path / "state")
    deploy(parents, None, ref="v1")  # the parent's pool now holds an open connection
    child = os.fork()
    if child == 0:
        code = 1
        try:
            own = Ledger.for_state_dir(tmp_path / "state")
            if own is not parents and own.engine is not parents.engine:
                deploy(own, "succeeded", ref="v2")
                code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert Ledger.for_state_dir(tmp_path / "state") is parents
    assert [(r.ref, r.outcome) for r in parents.releases("production")] == [
        ("v2", "succeeded"), ("v1", "running")]


def test_a_ledger_url_in_the_environment_is_every_state_directorys_ledger(
        tmp_path: Path, postgres_database: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A fleet's workers on several machines write to one ledger: DEPLOY_LEDGER_URL names it."""
    monkeypatch.setenv("DEPLOY_LEDGER_URL", postgres_database)
    first = Ledger.for_state_dir(tmp_path / "host-1")
    try:
        assert Ledger.for_state_dir(tmp_path / "host-2") is first and first.url == postgres_database
        release = first.open_release(environment="production", ref="v2")
        assert [r.id for r in Ledger.for_state_dir(tmp_path / "host-2").releases("production")] == [release.id]
        assert not (tmp_path / "host-1").exists() and not (tmp_path / "host-2").exists()
    finally:
        first.engine.dispose()
