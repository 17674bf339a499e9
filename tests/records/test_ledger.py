"""The release ledger on real SQLite files (shared between processes) and real PostgreSQL."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import pytest

from records.ledger import OUTCOMES, TERMINAL, Ledger

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
    rolling_back = Ledger.for_state_dir(tmp_path / "state")
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
