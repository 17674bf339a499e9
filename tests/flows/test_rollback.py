"""Rollback stories on a real sandbox (SQLite): an unhealthy release, a migration that fails in
production, and a rollback by hand. In-process, the deploy's failure hook runs the rollback flow
itself (there is no rollback deployment on the test server)."""

from __future__ import annotations

import pytest

from deployments.errors import HealthCheckFailed, InvalidInput, MigrationFailed, ServiceError
from records.ledger import Ledger
from tasks.process_state import running_pid
from tests.conftest import without_canary
from tests.flows.conftest import Approver, Sandbox, approval
from tests.flows.invariants import assert_healthy_on, assert_lock_free, last_release, state

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_server")]
APPROVERS = [approval("Dana Whitfield", "team-lead"), approval("Sam Okafor", "product-owner")]


def deploy(environment: str, ref: str, **kwargs):  # type: ignore[no-untyped-def]
    from flows.production_deployment import production_deployment

    if environment == "production":
        approver = Approver(list(APPROVERS))
        approver.start()
    return production_deployment(environment=environment, ref=ref, **kwargs)


def rollback(environment: str, **kwargs):  # type: ignore[no-untyped-def]
    from flows.rollback import rollback as flow

    return flow(environment=environment, **kwargs)


@pytest.fixture(scope="module", autouse=True)
def at_v2(box: Sandbox) -> None:
    for env in ("staging", "production"):
        box.edit(env, lambda t: t.replace("deadline_seconds = 30", "deadline_seconds = 5"))
    deploy("staging", "v2")
    deploy("production", "v2")


def test_v3_fails_midway_on_sqlite_and_the_backup_is_restored(box: Sandbox) -> None:
    # With the rehearsal on, the prerequisites catch v3 (tests/flows/test_deploy_on_postgres.py);
    # switched off, the real migration fails in production.
    box.edit("production", lambda t: t.replace("migration_rehearsal = true", "migration_rehearsal = false"))
    deploy("staging", "v3")  # staging's data has no duplicates: v3 migrates there
    before = state(box, "production")
    with pytest.raises(MigrationFailed, match="UNIQUE constraint failed: jobs.canonical_url"):
        deploy("production", "v3")
    assert state(box, "production") == before
    assert_healthy_on(box, "production", box.sha("v2"))
    release = last_release(box, "production")
    assert release.outcome == "rolled_back" and release.failed_step == "run migrations"
    ledger = Ledger.for_state_dir(box.config("production").state_dir)
    rollback_row = next(r for r in ledger.all_releases("production") if r.rollback_of == release.id)
    assert "restore-backup" in [s.name for s in ledger.steps(rollback_row.id) if s.status == "completed"]
    assert (box.config("production").backups.directory / str(release.backup_tag)).is_dir(), "the backup is kept"


def test_release_failing_its_canary_never_serves_and_is_rolled_back(box: Sandbox) -> None:
    deploy("staging", "v4")  # staging has no NULL companies: v4 is healthy there, canary included
    before = state(box, "production")
    master = running_pid(box.config("production"))
    with pytest.raises(ServiceError, match="failed on a canary .* before taking traffic") as caught:
        deploy("production", "v4")
    assert "documents" in str(caught.value)
    after = state(box, "production")
    assert after == before, "code, revision and schema must be exactly as before the deploy"
    assert_healthy_on(box, "production", box.sha("v2"))
    ledger = Ledger.for_state_dir(box.config("production").state_dir)
    assert_lock_free("production", ledger)
    release = last_release(box, "production")
    assert release.outcome == "rolled_back" and release.failed_step == "check canary (production)"
    assert "restart-application" not in [s.name for s in ledger.steps(release.id)], "v4 was never reloaded"
    rollbacks = [r for r in ledger.all_releases("production") if r.rollback_of == release.id]
    assert len(rollbacks) == 1 and rollbacks[0].outcome == "succeeded"
    steps = [s.name for s in ledger.steps(rollbacks[0].id) if s.status == "completed"]
    # v2's processes never stopped serving: traffic resumes before they are renewed from v2's tree.
    assert steps == ["choose-rollback-plan", "stop-traffic", "downgrade-database", "check-out-previous-release",
                     "check-health", "resume-traffic", "renew-application", "check-health", "run-critical-path-tests"]
    assert running_pid(box.config("production")) not in (None, master), "the processes were renewed"


def test_unhealthy_release_is_rolled_back_code_and_database(box: Sandbox) -> None:
    original = (box.environments / "production.toml").read_text()
    box.edit("production", without_canary)  # v4 now takes traffic and fails phase 3
    try:
        before = state(box, "production")
        with pytest.raises(HealthCheckFailed) as caught:
            deploy("production", "v4")
    finally:
        box.edit("production", lambda _: original)
    assert "documents" in str(caught.value)
    after = state(box, "production")
    assert after == before, "code, revision and schema must be exactly as before the deploy"
    assert after["sha"] == box.sha("v2") and after["revision"] == "0002"
    assert_healthy_on(box, "production", box.sha("v2"))
    ledger = Ledger.for_state_dir(box.config("production").state_dir)
    assert_lock_free("production", ledger)
    release = last_release(box, "production")
    assert release.outcome == "rolled_back" and release.failed_step == "check health (production)"
    assert release.restored_at is not None
    rollbacks = [r for r in ledger.all_releases("production") if r.rollback_of == release.id]
    assert len(rollbacks) == 1 and rollbacks[0].outcome == "succeeded"
    steps = [s.name for s in ledger.steps(rollbacks[0].id) if s.status == "completed"]
    assert steps == ["choose-rollback-plan", "stop-traffic", "downgrade-database", "check-out-previous-release",
                     "restart-application", "check-health", "resume-traffic", "run-critical-path-tests"]


def test_rolling_back_twice_is_harmless(box: Sandbox) -> None:
    release = last_release(box, "production")
    before = state(box, "production")
    message = rollback("production", failed_run_id=release.flow_run_id)
    assert message.startswith("nothing to undo: the release is already rolled_back")
    assert state(box, "production") == before


def test_rollback_by_hand_undoes_the_live_release(box: Sandbox) -> None:
    live = Ledger.for_state_dir(box.config("production").state_dir).last_succeeded("production")
    assert live is not None and live.ref == "v2"
    with pytest.raises(InvalidInput, match="is not a release that was live before v2"):
        rollback("production", to="v4")
    # Without a maintenance mode, and v2's migration only adding columns and an index, v1 comes back
    # first and the database is undone under it: v2's code never meets v1's schema.
    original = (box.environments / "production.toml").read_text()
    box.edit("production", lambda t: "\n".join(line for line in t.splitlines() if not line.startswith("maintenance_o")))
    try:
        message = rollback("production", reason="by hand")
    finally:
        box.edit("production", lambda _: original)
    assert message.startswith(f"production is back on {box.sha('v1')[:12]}")
    ledger = Ledger.for_state_dir(box.config("production").state_dir)
    undo = next(r for r in ledger.all_releases("production") if r.rollback_of == live.id)
    assert [s.name for s in ledger.steps(undo.id) if s.status == "completed"] == [
        "choose-rollback-plan", "stop-traffic", "check-out-previous-release", "restart-application", "check-health",
        "downgrade-database", "resume-traffic", "run-critical-path-tests"]
    after = state(box, "production")
    assert after["sha"] == box.sha("v1") and after["revision"] == "0001"
    assert_healthy_on(box, "production", box.sha("v1"))
    assert Ledger.for_state_dir(box.config("production").state_dir).last_succeeded("production") is None
