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

One sandbox, shared by the tests in the order above; each test
brings the environments to the state it starts from (`bring`), so it also runs on its own.
The failing releases are committed into the sandbox's origin by tests/faults/releases.py.
The PostgreSQL rows are tests/faults/test_faults_postgres.py; the helpers both drive with are
tests/faults/driving.py.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from deployments.errors import (
    BackupFailed,
    ConfigError,
    HealthCheckFailed,
    LockHeld,
    MigrationFailed,
    PreflightError,
    ServiceError,
)
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
    maintenance,
    plan_of,
    rollback_of,
    run_app_command,
    snapshot,
    without_rehearsal,
)
from tests.faults.releases import (
    EMAIL_BROKEN,
    EMAIL_BROKEN_HOTFIX_A,
    EMAIL_BROKEN_HOTFIX_B,
    HEALTH_FLAPS,
    MIGRATION_FAILS_MIDWAY,
)
from tests.flows.conftest import Approver, Sandbox, approval
from tests.flows.invariants import (
    assert_healthy_on,
    assert_lock_free,
    assert_metrics_moved,
    deployments_metric,
    last_release,
    state,
)

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_server")]


# --- sandboxes ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sqlite_sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    yield from fault_sandbox(tmp_path_factory, "sqlite")


@pytest.fixture
def sq(sqlite_sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> Sandbox:
    # The sandbox lives until the module ends; the flows find it through this variable.
    monkeypatch.setenv("DEPLOY_ENVIRONMENTS_DIR", str(sqlite_sandbox.environments))
    return sqlite_sandbox


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


# --- #6 migration 2 of 3 fails -------------------------------------------------------------------------------


def test_06_migration_2_of_3_fails_on_sqlite_and_the_backup_is_restored(sq: Sandbox) -> None:
    before, error = deploy_migration_that_fails_midway(sq)
    release, undo, steps = assert_midway_failure_undone(
        sq, before, error, "alembic upgrade failed: sqlalchemy.exc.IntegrityError: (sqlite3.IntegrityError) "
                           "UNIQUE constraint failed: jobs.source_url")
    # SQLite committed f001's ALTER before f002 failed: only the backup puts the schema back. The app
    # never ran the release: its processes serve again as soon as the database is back, then are renewed.
    assert "the schema may be half-changed" in plan_of(sq, "production", undo)
    # Nobody wrote since the backup: restoring it loses nothing, and the step says so.
    measured = next(s.detail for s in ledger_of(sq, "production").steps(undo.id) if s.name == "measure-writes-since-backup")
    assert measured.startswith("nothing was written since backup pre-deployment-"), measured
    assert steps == ["choose-rollback-plan", "stop-traffic", "measure-writes-since-backup", "restore-backup",
                     "check-out-previous-release",
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


# --- a restore that would discard what users wrote since the backup ------------------------------------------


class Users(threading.Thread):
    """People using production: a row in the outbox every 50 ms, straight into the live database, until
    the rollback starts measuring what a restore would discard."""

    def __init__(self, box: Sandbox) -> None:
        super().__init__(daemon=True)
        self.box = box
        self.written: list[int] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        from sqlalchemy import create_engine, text

        from deployments.secrets import resolve_database_url

        config = self.box.config("production")
        engine = create_engine(resolve_database_url(config), connect_args={"timeout": 30})
        ledger = ledger_of(self.box, "production")
        started = time.monotonic()
        try:
            while time.monotonic() - started < 300:
                newest = max(ledger.all_releases("production"), key=lambda r: r.id)
                if any(s.name == "measure-writes-since-backup" for s in ledger.steps(newest.id)):
                    return
                with engine.begin() as conn:
                    row = conn.execute(text(
                        "INSERT INTO outbox (recipient, subject, body, status, created_at) VALUES "
                        "(:who, 'Your application', 'Thanks', 'queued', CURRENT_TIMESTAMP) RETURNING id"), {"who": USER})
                    self.written.append(int(row.scalar_one()))
                time.sleep(0.05)
        except BaseException as exc:  # noqa: BLE001 - the test reports it
            self.error = exc
        finally:
            engine.dispose()


class Decider(threading.Thread):
    """Answers the first rollback that pauses for a decision with `deployctl decide`, as an operator would."""

    def __init__(self, *args: str) -> None:
        super().__init__(daemon=True)
        self.args = args
        self.result: subprocess.CompletedProcess[str] | None = None

    def run(self) -> None:
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateName

        deadline = time.monotonic() + 240
        with get_client(sync_client=True) as client:
            while time.monotonic() < deadline:
                paused = [r for r in client.read_flow_runs(flow_run_filter=FlowRunFilter(
                    state=FlowRunFilterState(name=FlowRunFilterStateName(any_=["Paused"])))) if r.name.startswith("rollback")]
                if paused:
                    self.result = subprocess.run([str(Path(sys.executable).with_name("deployctl")), "decide",
                                                  str(paused[0].id), *self.args], capture_output=True, text=True,
                                                 timeout=60, env=dict(os.environ))
                    return
                time.sleep(0.3)


USER = "users-thread@example.com"


def outbox_ids(box: Sandbox) -> set[int]:
    """The outbox rows the users wrote (the critical paths write there too, and SQLite reuses ids)."""
    from sqlalchemy import create_engine, text

    from deployments.secrets import resolve_database_url

    engine = create_engine(resolve_database_url(box.config("production")))
    with engine.connect() as conn:
        ids = set(conn.execute(text("SELECT id FROM outbox WHERE recipient = :who"), {"who": USER}).scalars())
    engine.dispose()
    return ids


def test_a_restore_that_would_discard_rows_written_since_the_backup_waits_for_a_decision(sq: Sandbox) -> None:
    """Migration 2 of 3 fails on SQLite, whose only way back is the backup, while users write: the
    automatic rollback measures what the restore would discard, alerts, and asks. Kept: nothing is
    restored and traffic resumes. Then a rollback of the same run is answered restore: it is carried out."""
    bring(sq, "production", "v2")
    bring(sq, "staging", MIGRATION_FAILS_MIDWAY)
    before = snapshot(sq, "production")
    users = Users(sq)
    decider = Decider("--as", "Rosa Diaz", "--keep-release", "--comment", "bookings are open; we fix it tonight")
    with edited(sq, "production", without_rehearsal):
        users.start()
        decider.start()
        with pytest.raises(MigrationFailed):
            deploy("production", MIGRATION_FAILS_MIDWAY)
    users.join(timeout=30)
    decider.join(timeout=30)
    assert decider.result is not None and decider.result.returncode == 0, decider.result
    assert decider.result.stdout.startswith("keep-release: answered rollback production: ")
    assert users.error is None and users.written, users.error
    release = last_release(sq, "production")
    undo, steps = rollback_of(sq, "production", release)
    assert undo.outcome == "aborted" and "restore-backup" not in steps
    assert steps == ["choose-rollback-plan", "stop-traffic", "measure-writes-since-backup", "resume-traffic"]
    measured = next(s.detail for s in ledger_of(sq, "production").steps(undo.id)
                    if s.name == "measure-writes-since-backup")
    counted = re.search(r"would discard (\d+) rows? written since .*: outbox \((\d+) inserted\)$", measured)
    assert counted and counted.group(1) == counted.group(2), measured
    assert 0 < int(counted.group(1)) <= len(users.written)
    assert undo.error and undo.error.startswith("production keeps the failed release, as Rosa Diaz decided "
                                                "(bookings are open; we fix it tonight): traffic resumed")
    assert set(users.written) <= outbox_ids(sq), "nothing the users wrote was discarded"
    config = sq.config("production")
    assert httpx.get(config.service.base_url + config.health.path, timeout=5).status_code == 200, "traffic resumed"
    assert_lock_free("production", ledger_of(sq, "production"))

    # The same run rolled back again, answered restore: the backup comes back, and with it what it held.
    restore = {"decision": "restore", "decided_by": "Rosa Diaz", "comment": "the outbox rows are resent from the CRM"}
    answering = Approver([restore])
    answering.start()
    from tests.faults.driving import rollback

    rollback("production", failed_run_id=release.flow_run_id, reason="test: restore after all")
    answering.join(timeout=10)
    assert answering.given == [restore]
    again = last_release(sq, "production")
    assert again.outcome == "rolled_back"
    after = snapshot(sq, "production")
    assert after.pop("backups") == [*before.pop("backups"), release.backup_tag]
    assert after == before and after["revision"] == "0002"
    kept = set(users.written) & outbox_ids(sq)
    assert len(kept) == len(users.written) - int(counted.group(1)), \
        "exactly the rows written since the backup are gone, as decided; those before it are still there"
    assert_healthy_on(sq, "production", sq.sha("v2"))
