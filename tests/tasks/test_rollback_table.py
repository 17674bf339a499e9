"""The rollback table of tasks/rollback_plan.py, read from a real ledger: each row is a deploy written
into a SQLite ledger the way the flows write it (the release row, then its steps), and the plan that
`decide` draws from it: what happens to the database, then to the code, and why, in the words the
rollback's notification and run name use (`describe`). `choose_rollback_plan` then reads the live
revision from a real database and refuses a restore that has no backup to restore."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from deployments.config import EnvironmentConfig, load_environment_file
from deployments.errors import RollbackFailed
from records.ledger import Ledger, Release
from tasks.rollback_plan import RollbackPlan, choose_rollback_plan, decide
from tests.tasks.release_history import environment_file

NEW, OLD = "b" * 40, "a" * 40
TAG = "pre-deployment-20261203-101500"
REVERSIBLE = [{"revision": "0002", "message": "salary range", "has_downgrade": True},
              {"revision": "0003", "message": "company index", "has_downgrade": True}]
ONE_WAY = [REVERSIBLE[0], {"revision": "0003", "message": "unique URLs", "has_downgrade": False}]
# A ledger written before has_downgrade was recorded: nothing says the revision can be undone.
UNFLAGGED = [{"revision": "0002", "message": "salary range"}]
CHANGED = dict(code_changed=True, migration_started=True)

DOWNGRADE = f"downgrade the database to 0001; check out {OLD[:12]}"
RESTORE = f"restore backup {TAG}; check out {OLD[:12]}"
VERIFY = f"verify the database is still at 0001; check out {OLD[:12]}"
CODE_ONLY = f"database untouched; check out {OLD[:12]}"


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    book = Ledger.for_state_dir(tmp_path / "state")
    yield book
    book.engine.dispose()


def deployed(ledger: Ledger, fields: dict[str, Any], migration_steps: list[str]) -> Release:
    """A deploy as the flows record it: the release row, the steps it got to, then its outcome.
    A step `running` was started and never finished (the run was killed in it)."""
    values: dict[str, Any] = dict(environment="production", ref="v2", target_sha=NEW, previous_sha=OLD,
                                  db_revision_before="0001", backup_tag=TAG, migrations=[])
    values.update(fields)
    outcome = values.pop("outcome", "failed")
    release = ledger.open_release(**values)
    steps = ["check-migrations"]
    if values.get("backup_tag"):
        steps.append("backup-database")
    if values.get("code_changed"):
        steps.append("pull-release")
    for name in steps:
        ledger.step_finished(ledger.step_started(release.id, name), "completed")
    for status in migration_steps:
        step_id = ledger.step_started(release.id, "run-migrations")
        if status != "running":
            ledger.step_finished(step_id, status, "" if status == "completed" else "alembic upgrade failed")
    if outcome != "running":
        ledger.finish(release.id, outcome)
    return ledger.get(release.id)


ROWS: list[Any] = [
    # id (what the row says), ledger fields, run-migrations records, backend, live revision -> plan
    pytest.param({}, [], "sqlite", "0001", "none", False,
                 "nothing to undo: it failed before changing anything",
                 id="a deploy that failed before changing anything undoes nothing"),
    pytest.param(dict(dry_run=True, backup_tag=None), [], "postgresql", "0001", "none", False,
                 "nothing to undo: it failed before changing anything",
                 id="a dry run that failed a check undoes nothing"),
    pytest.param(dict(dry_run=True, backup_tag=None, outcome="noop"), [], "postgresql", "0001", "none", False,
                 "nothing to undo: the release is already noop",
                 id="a dry run that passed (noop) undoes nothing"),
    pytest.param(dict(outcome="noop", backup_tag=None), [], "sqlite", "0001", "none", False,
                 "nothing to undo: the release is already noop",
                 id="a deploy of the live release (noop) undoes nothing"),
    *[pytest.param(dict(CHANGED, migrations=REVERSIBLE, outcome=done), ["completed"], "sqlite", "0003", "none", False,
                   f"nothing to undo: the release is already {done}",
                   id=f"a release already {done} is not undone twice even though it changed everything")
      for done in ("rolled_back", "rollback_failed", "aborted")],
    pytest.param(dict(code_changed=True), [], "sqlite", "0001", "none", True,
                 f"{CODE_ONLY} (only the code changed)",
                 id="the code changed but no migration started, so only the code is reverted"),
    pytest.param(dict(code_changed=True, migrations=REVERSIBLE), [], "postgresql", None, "none", True,
                 f"{CODE_ONLY} (only the code changed)",
                 id="pending migrations that never started leave the database alone whatever its revision"),
    pytest.param(dict(CHANGED, migrations=REVERSIBLE), ["completed"], "sqlite", "0003", "downgrade", True,
                 f"{DOWNGRADE} (migrated fine, the new code failed)",
                 id="migrated fine and every revision has a downgrade, so downgrade then revert the code"),
    pytest.param(dict(CHANGED, migrations=REVERSIBLE, db_revision_before=None), ["completed"], "sqlite", "0003",
                 "downgrade", True, f"downgrade the database to base; check out {OLD[:12]} "
                                    "(migrated fine, the new code failed)",
                 id="the first migrations of a fresh database are downgraded to base"),
    pytest.param(dict(CHANGED, migrations=ONE_WAY), ["completed"], "postgresql", "0003", "restore", True,
                 f"{RESTORE} (a migration has no downgrade)",
                 id="migrated fine but one revision has no downgrade, so restore the backup then revert"),
    pytest.param(dict(CHANGED, migrations=UNFLAGGED), ["completed"], "sqlite", "0002", "restore", True,
                 f"{RESTORE} (a migration has no downgrade)",
                 id="a revision recorded without its downgrade flag counts as one way"),
    pytest.param(dict(CHANGED), ["completed"], "postgresql", "0001", "verify", True,
                 f"{VERIFY} (the release had no migration)",
                 id="a release with nothing to migrate only has its revision verified"),
    pytest.param(dict(CHANGED, migrations=REVERSIBLE, outcome="succeeded"), ["completed"], "postgresql", "0003",
                 "downgrade", True, f"{DOWNGRADE} (undoing a release that succeeded)",
                 id="a succeeded release undone by hand is downgraded with its own scripts"),
    pytest.param(dict(CHANGED, migrations=ONE_WAY, outcome="succeeded"), ["completed"], "sqlite", "0003",
                 "restore", True, f"{RESTORE} (a migration has no downgrade)",
                 id="a succeeded release with a one way revision undone by hand is restored"),
    pytest.param(dict(CHANGED, migrations=REVERSIBLE), ["failed", "completed"], "sqlite", "0003", "downgrade", True,
                 f"{DOWNGRADE} (migrated fine, the new code failed)",
                 id="a migration step retried to completion counts as completed"),
    pytest.param(dict(CHANGED, migrations=REVERSIBLE), ["completed", "failed"], "sqlite", "0003", "restore", True,
                 f"{RESTORE} (the migration failed on sqlite: the schema may be half-changed)",
                 id="a migration step whose last record failed counts as failed"),
    pytest.param(dict(CHANGED, migrations=REVERSIBLE), ["failed"], "postgresql", "0001", "verify", True,
                 f"{VERIFY} (the migration failed in one transaction that PostgreSQL rolled back)",
                 id="a migration failed on PostgreSQL with the revision where it was, so verify then revert"),
    pytest.param(dict(CHANGED, migrations=REVERSIBLE), ["failed"], "postgresql", "0002", "restore", True,
                 f"{RESTORE} (the migration failed on postgresql: the schema may be half-changed)",
                 id="a migration failed on PostgreSQL after the revision moved, so restore"),
    pytest.param(dict(CHANGED, migrations=REVERSIBLE), ["failed"], "postgresql", None, "restore", True,
                 f"{RESTORE} (the migration failed on postgresql: the schema may be half-changed)",
                 id="a migration failed on PostgreSQL whose revision cannot be read now, so restore"),
    pytest.param(dict(CHANGED, migrations=REVERSIBLE, db_revision_before=None), ["failed"], "postgresql", None,
                 "verify", True, None,
                 id="a migration failed on a fresh PostgreSQL database that still has no revision, so verify"),
    pytest.param(dict(CHANGED, migrations=REVERSIBLE), ["failed"], "sqlite", "0001", "restore", True,
                 f"{RESTORE} (the migration failed on sqlite: the schema may be half-changed)",
                 id="a migration failed on SQLite is restored even with the revision where it was"),
    pytest.param(dict(CHANGED, migrations=REVERSIBLE), ["failed"], "mysql", "0001", "restore", True,
                 f"{RESTORE} (the migration failed on mysql: the schema may be half-changed)",
                 id="a migration failed on a database without transactional DDL is restored"),
    pytest.param(dict(CHANGED, migrations=REVERSIBLE), ["running"], "postgresql", "0001", "restore", True,
                 f"{RESTORE} (the migration was cut off on postgresql: the schema may be half-changed)",
                 id="a migration cut off by a crash is restored even on PostgreSQL"),
    pytest.param(dict(CHANGED, migrations=REVERSIBLE, outcome="running"), [], "sqlite", "0001", "restore", True,
                 f"{RESTORE} (the migration was cut off on sqlite: the schema may be half-changed)",
                 id="a run killed as its migration began (no step recorded) is restored"),
]


@pytest.mark.parametrize(("fields", "migration_steps", "backend", "live", "database", "code", "described"),
                         ROWS)
def test_the_rollback_table(ledger: Ledger, fields: dict[str, Any], migration_steps: list[str], backend: str,
                            live: str | None, database: str, code: bool, described: str | None) -> None:
    release = deployed(ledger, fields, migration_steps)
    plan = decide(release, ledger.steps(release.id), backend, live)
    assert (plan.database, plan.code) == (database, code)
    assert plan.nothing_to_do == (database == "none" and not code)
    if described is not None:
        assert plan.describe() == described
    assert (plan.release_id, plan.from_sha, plan.to_sha) == (release.id, NEW, OLD)
    assert (plan.to_revision, plan.backup_tag) == (release.db_revision_before, release.backup_tag)


def test_a_plan_never_names_a_revision_as_none(ledger: Ledger) -> None:
    release = deployed(ledger, dict(CHANGED, migrations=REVERSIBLE, db_revision_before=None), ["failed"])
    plan = decide(release, ledger.steps(release.id), "postgresql", None)
    assert plan.database == "verify"
    assert "None" not in plan.describe(), plan.describe()


def test_describe_says_each_action_once_in_order() -> None:
    plan = RollbackPlan(release_id=7, from_sha=NEW, to_sha=OLD, to_revision="0001", database="downgrade",
                        code=True, backup_tag=TAG, reason="migrated fine, the new code failed")
    database, code = plan.describe().removesuffix(" (migrated fine, the new code failed)").split("; ")
    assert database == "downgrade the database to 0001" and code == f"check out {OLD[:12]}"
    untouched = RollbackPlan(release_id=7, from_sha=NEW, to_sha=OLD, to_revision="0001", database="restore",
                             code=False, backup_tag=TAG, reason="by hand")
    assert untouched.describe() == f"restore backup {TAG}; code untouched (by hand)"
    assert not untouched.nothing_to_do


# --- choose_rollback_plan: the live database and the backup -------------------------------------------------


def config_with_database(tmp_path: Path, url: str, monkeypatch: pytest.MonkeyPatch) -> EnvironmentConfig:
    """The committed production file under tmp_path, its database URL in the env file it lists."""
    monkeypatch.delenv("JOBAPP_PRODUCTION_DATABASE_URL", raising=False)
    (tmp_path / "sandbox.env").write_text(f"JOBAPP_PRODUCTION_DATABASE_URL={url}\n")
    return load_environment_file(environment_file(tmp_path))


def sqlite_at(path: Path, revision: str | None) -> str:
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE jobs (id INTEGER PRIMARY KEY)")
        if revision is not None:
            conn.execute("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL PRIMARY KEY)")
            conn.execute("INSERT INTO alembic_version VALUES (?)", (revision,))
    conn.close()
    return f"sqlite:///{path}"


def test_the_plan_reads_the_backend_and_the_live_revision_of_the_real_database(
        tmp_path: Path, ledger: Ledger, monkeypatch: pytest.MonkeyPatch) -> None:
    config = config_with_database(tmp_path, sqlite_at(tmp_path / "app.db", "0001"), monkeypatch)
    release = deployed(ledger, dict(CHANGED, migrations=REVERSIBLE), ["failed"])
    plan = choose_rollback_plan.fn(config, ledger, release)
    assert plan.describe() == f"{RESTORE} (the migration failed on sqlite: the schema may be half-changed)"


@pytest.mark.postgres
@pytest.mark.parametrize(("live", "database"), [("0001", "verify"), ("0002", "restore")],
                         ids=["a PostgreSQL database left at its revision is verified",
                              "a PostgreSQL database whose revision moved is restored"])
def test_on_postgresql_the_live_revision_decides(tmp_path: Path, ledger: Ledger,
                                                 monkeypatch: pytest.MonkeyPatch, postgres_database: str,
                                                 live: str, database: str) -> None:
    engine = create_engine(postgres_database)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL PRIMARY KEY)"))
        conn.execute(text("INSERT INTO alembic_version VALUES (:revision)"), {"revision": live})
    engine.dispose()
    config = config_with_database(tmp_path, postgres_database, monkeypatch)
    release = deployed(ledger, dict(CHANGED, migrations=REVERSIBLE), ["failed"])
    assert choose_rollback_plan.fn(config, ledger, release).database == database


def test_a_restore_without_a_backup_is_refused_with_what_to_do(
        tmp_path: Path, ledger: Ledger, monkeypatch: pytest.MonkeyPatch) -> None:
    config = config_with_database(tmp_path, sqlite_at(tmp_path / "app.db", "0002"), monkeypatch)
    release = deployed(ledger, dict(CHANGED, migrations=ONE_WAY, backup_tag=None), ["completed"])
    with pytest.raises(RollbackFailed) as caught:
        choose_rollback_plan.fn(config, ledger, release)
    assert (caught.value.step, caught.value.cause, caught.value.action) == (
        "choose rollback plan", "the database must be restored but the release took no backup",
        "restore the database by hand from your own backups")


@pytest.mark.parametrize(("fields", "migration_steps", "database"), [
    (dict(CHANGED, migrations=REVERSIBLE, backup_tag=None), ["completed"], "downgrade"),
    (dict(CHANGED, backup_tag=None), ["completed"], "verify"),
    (dict(code_changed=True, backup_tag=None), [], "none"),
], ids=["a downgrade needs no backup", "a verify needs no backup", "a code-only revert needs no backup"])
def test_plans_that_restore_nothing_need_no_backup(tmp_path: Path, ledger: Ledger,
                                                   monkeypatch: pytest.MonkeyPatch, fields: dict[str, Any],
                                                   migration_steps: list[str], database: str) -> None:
    config = config_with_database(tmp_path, sqlite_at(tmp_path / "app.db", "0003"), monkeypatch)
    release = deployed(ledger, fields, migration_steps)
    plan = choose_rollback_plan.fn(config, ledger, release)
    assert (plan.database, plan.code, plan.backup_tag) == (database, True, None)
