"""The rollback table itself (tasks/rollback_plan.py), row by row: what the ledger says a deploy did
decides what is undone, on each database kind."""

from __future__ import annotations

from typing import Any

import pytest

from records.ledger import Release, StepRecord
from tasks.rollback_plan import decide

NEW, OLD = "b" * 40, "a" * 40
REVERSIBLE = [{"revision": "0002", "message": "salary range", "has_downgrade": True}]
ONE_WAY = [*REVERSIBLE, {"revision": "0003", "message": "unique URLs", "has_downgrade": False}]


def release(**fields: Any) -> Release:
    values: dict[str, Any] = dict(id=7, environment="production", ref="v2", target_sha=NEW, previous_sha=OLD,
                                  db_revision_before="0001", backup_tag="pre-deployment-20261203-101500",
                                  code_changed=False, migration_started=False, outcome="failed", migrations=[])
    values.update(fields)
    return Release(**values)


def migration(status: str | None) -> list[StepRecord]:
    steps = [StepRecord("backup-database", "completed", "", 1.0), StepRecord("pull-release", "completed", "", 0.4)]
    return steps + ([StepRecord("run-migrations", status, "", 2.0)] if status else [])


CHANGED = dict(code_changed=True, migration_started=True)
ROWS: list[tuple[str, dict[str, Any], str | None, str, str | None, str, bool, str]] = [
    # situation, ledger fields, run-migrations, backend, live revision -> database, code, reason
    ("failed before changing anything", {}, None, "sqlite", "0001",
     "none", False, "it failed before changing anything"),
    ("only the code changed", dict(code_changed=True), None, "postgresql", "0001",
     "none", True, "only the code changed"),
    ("migration failed on PostgreSQL, revision unchanged", dict(CHANGED, migrations=REVERSIBLE), "failed",
     "postgresql", "0001", "verify", True, "the migration failed in one transaction that PostgreSQL rolled back"),
    ("migration failed on PostgreSQL, revision moved", dict(CHANGED, migrations=REVERSIBLE), "failed",
     "postgresql", "0002", "restore", True, "the migration failed on postgresql: the schema may be half-changed"),
    ("migration failed on SQLite", dict(CHANGED, migrations=REVERSIBLE), "failed", "sqlite", "0001",
     "restore", True, "the migration failed on sqlite: the schema may be half-changed"),
    ("migration cut off by a crash", dict(CHANGED, migrations=REVERSIBLE), "running", "postgresql", "0001",
     "restore", True, "the migration was cut off on postgresql: the schema may be half-changed"),
    ("migration never recorded (killed as it began)", dict(CHANGED, migrations=REVERSIBLE), None, "sqlite", "0001",
     "restore", True, "the migration was cut off on sqlite: the schema may be half-changed"),
    ("migrated fine, the new code failed", dict(CHANGED, migrations=REVERSIBLE), "completed", "sqlite", "0002",
     "downgrade", True, "migrated fine, the new code failed"),
    ("a revision has no downgrade", dict(CHANGED, migrations=ONE_WAY), "completed", "postgresql", "0003",
     "restore", True, "a migration has no downgrade"),
    ("the release had no migration", dict(CHANGED), "completed", "sqlite", "0001",
     "verify", True, "the release had no migration"),
    ("undoing a release that succeeded", dict(CHANGED, migrations=REVERSIBLE, outcome="succeeded"), "completed",
     "postgresql", "0002", "downgrade", True, "undoing a release that succeeded"),
    *[(f"already {done}", dict(CHANGED, migrations=REVERSIBLE, outcome=done), "completed", "sqlite", "0001",
       "none", False, f"the release is already {done}") for done in ("rolled_back", "rollback_failed", "aborted", "noop")],
]


@pytest.mark.parametrize(("situation", "fields", "migrated", "backend", "live", "database", "code", "reason"), ROWS,
                         ids=[row[0] for row in ROWS])
def test_the_rollback_table(situation: str, fields: dict[str, Any], migrated: str | None, backend: str,
                            live: str | None, database: str, code: bool, reason: str) -> None:
    plan = decide(release(**fields), migration(migrated), backend, live)
    assert (plan.database, plan.code, plan.reason) == (database, code, reason)
    assert (plan.release_id, plan.from_sha, plan.to_sha, plan.to_revision) == (7, NEW, OLD, "0001")
    assert plan.nothing_to_do == (database == "none" and not code)


def test_the_last_run_of_the_migration_step_counts() -> None:
    """A retried run-migrations step: its last record says what happened."""
    steps = [*migration("failed"), StepRecord("run-migrations", "completed", "", 1.0)]
    plan = decide(release(**CHANGED, migrations=REVERSIBLE), steps, "sqlite", "0002")
    assert plan.database == "downgrade"


def test_a_plan_says_what_it_does_in_one_line() -> None:
    plan = decide(release(**CHANGED, migrations=ONE_WAY), migration("completed"), "postgresql", "0003")
    assert plan.describe() == (f"restore backup pre-deployment-20261203-101500; check out {OLD[:12]} "
                               "(a migration has no downgrade)")
    downgrade = decide(release(**CHANGED, migrations=REVERSIBLE), migration("completed"), "sqlite", "0002")
    assert downgrade.describe().startswith("downgrade the database to 0001; check out ")
    nothing = decide(release(), migration(None), "sqlite", "0001")
    assert nothing.describe() == "nothing to undo: it failed before changing anything"
