"""rollback: the runbook's rollback procedure, for code *and* database.

    acquire-deploy-lock        waits for a dead deploy's lease to lapse (rollback.lock_wait_seconds)
    choose-rollback-plan       from the ledger: what the failed deploy changed (see tasks/rollback_plan)
    start-host-runs            [fleet], the code going back: every host's run started, its process up
                               while traffic stops and the database is undone; stood down if the
                               rollback stops before its turn
    stop-traffic               immediate action: maintenance mode (503 + Retry-After)
                               (without one, when the release's migrations only added to the schema, the
                               previous code comes back and is healthy first, then the database is undone)
    downgrade-database         with the failed release's own scripts ... or, if that fails or cannot be,
    measure-writes-since-backup  what restoring would discard: anything, and an automatic rollback pauses
                               for a decision (restore / downgrade by hand / keep the release), one by
                               hand needs allow_data_loss (see tasks/data_loss)
    restore-backup             the verified pre-deployment backup ... or verify-database-revision
    check-out-previous-release
    switch-back-environment    [dependencies]: the environment live before the failed release, as recorded
    wait-for-hosts             [fleet]: every host's run standing by, before the first host is drained
    roll-back-batch-<n>        [fleet]: each host drained, rolled back by its own worker, back in rotation
    restart-application        skipped when the failed release never ran (stopped before its reload):
    check-health               the previous SHA is served and healthy (still in maintenance); when the
                               failed release never ran, healthy and not shown to serve another SHA
    resume-traffic
    check-load-balancer        [fleet]: the balancer's own check sees every host up again
    renew-application          ... the previous release's processes are renewed here, with traffic on
    run-critical-path-tests    verify critical functionality works
    notify                     stakeholders told; ledger: rolled_back or rollback_failed

Started by a failed deploy's hooks, by the server's automation when a deploy crashed, or by hand
(`prefect deployment run 'rollback/production'`, or from the UI, whose form offers the last good
release as `to`): with no `failed_run_id` it rolls back the live release to the one before it.
Running it twice is harmless: a release that is already rolled back has nothing left to undo. If
the restored version is unhealthy too, it stops, leaves maintenance on and says so: it never loops.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any
from uuid import UUID

from prefect import flow
from prefect.client.orchestration import get_client
from prefect.deployments import run_deployment
from prefect.exceptions import ObjectNotFound
from prefect.logging import get_run_logger
from prefect.runtime import flow_run

from deployments.config import EnvironmentConfig, load_environment
from deployments.errors import DeployError, InvalidInput, LockHeld, MigrationFailed, PreflightError, RollbackFailed
from deployments.logs import install_log_filters
from deployments.secrets import resolve_database_url
from tasks.steps import recording
from tasks.backups import restore_database
from tasks.data_loss import NotRestored, restore_allowed
from tasks.dependencies import ensure_environment, switch_environment
from tasks.fleet import check_balancer, hosts_standing_by, roll_fleet
from tasks.health import check_health
from records.ledger import Ledger, Release
from tasks.locks import deploy_lock, release_dead_holder
from records.metrics import publish_metrics
from tasks.migrations import downgrade_database, end_orphaned_sessions, verify_database_revision
from records.notifications import impact, notify
from records.reporting import publish_rollback, rename_run
from tasks.rollback_plan import RollbackPlan, choose_rollback_plan
from tasks.service import restart_application, resume_traffic, started_before, stop_traffic
from tasks.smoke import run_critical_path_tests
from tasks.source import add_worktree, current_sha, fetch_release, pull_release, remove_worktree, resolve


def run_name() -> str:
    """Until the plan is known; then `planned_name` says what is undone and what comes back."""
    params = flow_run.parameters
    if params.get("failed_run_id"):
        target = f"undo run {str(params['failed_run_id'])[:8]}"
    else:
        target = f"back to {params['to']}" if params.get("to") else "undo the live release"
    return f"rollback {params['environment']}: {target}"


def planned_name(environment: str, subject: Release, plan: RollbackPlan) -> str:
    undone = str(subject.target_sha or subject.ref)[:12]
    ref = "" if undone.startswith(subject.ref) else f"{subject.ref} "
    return f"rollback {environment}: {ref}{undone} → {str(plan.to_sha)[:12]}"


@flow(name="rollback", flow_run_name=run_name)
def rollback(environment: str, failed_run_id: str = "", to: str = "", reason: str = "",
             allow_data_loss: bool = False) -> str:
    """Roll an environment back to the release before the live one, code and database.

    Args:
        environment: The environment to roll back: a file in the environments directory.
        failed_run_id: The deploy run to undo, as the automatic rollbacks pass it. Leave empty to undo
            the live release.
        to: The release to return to (tag, branch or SHA). The form offers the last good release, the
            one live before the current release; empty means the same. Ignored with failed_run_id.
        reason: Why; shown in the notifications, the ledger and the rollback summary.
        allow_data_loss: Restore the backup even when rows were written since it was taken (they are lost).
            Without it a rollback by hand stops before such a restore, and an automatic one asks.
    """
    if failed_run_id:
        to = ""
    install_log_filters()  # first: a refused environment name is then one line, without traceback
    config = load_environment(environment)
    ledger = Ledger.for_state_dir(config.state_dir)
    run_id = str(flow_run.id) if flow_run.id else None
    record = ledger.open_release(environment=environment, flow_run_id=run_id, flow_run_name=flow_run.name,
                                 ref=to or "rollback", reason=reason)
    record_id = record.id
    app_name = f"deploy-rb-{(run_id or str(record_id))[:8]}"
    subject: Release | None = None
    try:
        if failed_run_id:
            free_lock_of_dead_run(ledger, failed_run_id)
        with recording(ledger, record_id), deploy_lock(environment, ledger, record_id, holder_run_id=run_id,
                                                       wait_seconds=config.rollback.lock_wait_seconds):
            try:
                subject = release_to_undo(config, ledger, failed_run_id, to)
                ledger.update(record_id, rollback_of=subject.id, previous_sha=subject.target_sha)
                plan = choose_rollback_plan(config, ledger, subject)
                if plan.nothing_to_do:
                    return _finish(config, ledger, record_id, subject, None, "noop", plan.describe())
                ledger.update(record_id, target_sha=plan.to_sha, db_revision_before=plan.to_revision,
                              flow_run_name=rename_run(run_id, planned_name(environment, subject, plan)))
                if plan.database == "restore" and plan.backup_tag and not failed_run_id and not allow_data_loss:
                    # By hand: a restore that would discard data is refused before anything changes.
                    restore_allowed(config, plan.backup_tag, automatic=False, allow_data_loss=False,
                                    before_any_change=True)
                # A fleet's hosts start their runs now, before traffic stops: their processes come up while the
                # database is undone, and no host waits for one to start while users get the maintenance page.
                # With [dependencies], the release environment each host makes live again.
                environment_key = subject.environment_before if config.dependencies else None
                with hosts_standing_by(config, plan.to_sha, record_id, wanted=plan.code, rollback=True,
                                       environment_key=environment_key) as hosts:
                    notify(config, f"Rollback of {environment} started", f"{plan.describe()}\nReason: {reason or '—'}")
                    stop_traffic(config)
                    code_first = code_before_database(config, plan)
                    restoring = RestorePolicy(automatic=bool(failed_run_id), allow_data_loss=allow_data_loss)
                    if not code_first:
                        undo_database(config, plan, app_name, restoring)
                    if plan.code:
                        pull_release.with_options(name="check-out-previous-release")(config, plan.to_sha)
                        if config.dependencies is not None:
                            switch_environment.with_options(name="switch-back-environment")(config, subject.environment_before)
                    # A release stopped before its reload (its canary failed) never ran: the app's processes
                    # all predate its checkout and still run the previous code, so traffic need not wait for
                    # a restart. They are renewed from the previous tree once traffic flows again.
                    never_ran = config.fleet is None and never_served(config, ledger, subject)
                    if config.fleet is not None and plan.code:
                        # Every host, batch by batch as the deploy rolled them: drained, rolled back by its own
                        # worker, healthy, back in rotation. A host already on the previous release is left.
                        assert hosts is not None  # started above, before traffic stopped
                        roll_fleet(config, plan.to_sha, record_id, hosts, rollback=True, environment_key=environment_key)
                    elif not never_ran and config.fleet is None:
                        restart_application(config)
                    # Retried each second until the health deadline, visibly; the first good answer will do:
                    # the release coming back held its health before, and every second here is downtime.
                    verify_health = check_health.with_options(retries=max(1, int(config.health.deadline_seconds)) - 1,
                                                              retry_delay_seconds=1)
                    # Processes that predate the failed release's checkout cannot be shown, by the workspace, to
                    # serve the previous one checked out after them: that waits for their renewal.
                    # A fleet's balancer sees no host up while maintenance is on: each host is asked itself.
                    for instance in config.hosts or [config]:
                        named = verify_health.with_options(name=f"check-health [{instance.host}]") if instance.host else verify_health
                        named(instance, plan.to_sha, allow_maintenance=True, held=False, unverified_ok=never_ran)
                    if code_first:
                        undo_database(config, plan, app_name, restoring)
                    ledger.update(subject.id, restored_at=datetime.now(timezone.utc))
                    resume_traffic(config)
                    if config.fleet is not None:
                        check_balancer(config)
                        verify_health(config, plan.to_sha, held=False)  # as users see it, through the balancer
                    if never_ran:
                        restart_application.with_options(name="renew-application")(config)
                        verify_health(config, plan.to_sha, held=False)
                    if config.rollback.verify_critical_paths:
                        run_critical_path_tests(config)
                    return _finish(config, ledger, record_id, subject, plan, "rolled_back",
                                   f"{environment} is back on {str(plan.to_sha)[:12]}: {plan.describe()}")
            except NotRestored as decided:  # inside the lock and the recording: resume-traffic is a step
                return _not_restored(config, ledger, record_id, decided)
    except DeployError as exc:
        get_run_logger().error("%s", exc)
        # Refused input changed nothing: the release it would have undone keeps its outcome.
        undone = None if isinstance(exc, InvalidInput) else subject
        _finish(config, ledger, record_id, undone, None, "rollback_failed", str(exc), step=exc.step, error=exc)
        raise


@dataclass(frozen=True)
class RestorePolicy:
    automatic: bool  # started for a failed deploy: it may pause for a decision
    allow_data_loss: bool


def _not_restored(config: EnvironmentConfig, ledger: Ledger, record_id: int, decided: NotRestored) -> str:
    """The rollback stopped before restoring, as decided (or as nobody decided in time): nothing was discarded."""
    who = f"{decided.by} decided" if decided.by != "nobody" else "no decision came"
    why = f" ({decided.comment})" if decided.comment else ""
    if decided.decision == "keep-release":
        resume_traffic(config)
        message = (f"{config.name} keeps the failed release, as {who}{why}: traffic resumed, nothing undone; "
                   f"{decided.written.describe()}")
        notify(config, f"Rollback of {config.name} stopped: the release is kept", message)
    else:
        message = (f"{config.name} is left in maintenance for a downgrade by hand, as {who}{why}: nothing was "
                   f"restored; {decided.written.describe()}")
        notify(config, f"ALERT: rollback of {config.name} stopped for a downgrade by hand", message + ". Undo the "
               "schema by hand (the failed release's `alembic downgrade`), check out the previous release, then turn "
               "maintenance off", alert=True)
    ledger.finish(record_id, "aborted", step="restore-backup", error=message)
    get_run_logger().warning(message)
    publish_rollback(ledger, record_id, "aborted", message)
    return message


def launch_rollback(environment: str, failed_run_id: str, reason: str, key: str, logger: Any,
                    as_subflow: bool = True) -> str:
    """Start `rollback/<environment>` for the release deployed by `failed_run_id`, as a run of its own
    (visible, cancellable; `key` makes a second request a no-op), or in this process when the server has
    no such deployment. Returns what was started, for the log and the notifications."""
    parameters = {"environment": environment, "failed_run_id": failed_run_id, "reason": reason}
    try:
        child = run_deployment(f"rollback/{environment}", parameters=parameters, timeout=0, as_subflow=as_subflow,
                               idempotency_key=key)
    except ObjectNotFound:
        logger.warning("No rollback/%s deployment on this server: rolling back in this process.", environment)
        state = rollback(**parameters, return_state=True)
        return f"rollback in this process: {state.name}"
    logger.warning("Rollback of %s started as run %s.", environment, child.name)
    return f"rollback run {child.name}"


def free_lock_of_dead_run(ledger: Ledger, failed_run_id: str) -> None:
    """A crashed deploy cannot release its lock; its lease would lapse on its own within a minute, but
    the rollback need not wait for that once Prefect says the run is over."""
    release = ledger.by_flow_run(failed_run_id)
    if release is None or not release.lock_lease_id:
        return
    with get_client(sync_client=True) as client:
        try:
            run = client.read_flow_run(UUID(failed_run_id))
        except ObjectNotFound:
            return
    if run.state is not None and run.state.is_final():
        if release_dead_holder(ledger, release):
            get_run_logger().info("Released the deploy lock that crashed run %s still held.", run.name)


def release_to_undo(config: EnvironmentConfig, ledger: Ledger, failed_run_id: str | None, to: str | None) -> Release:
    """The failed deploy named by `failed_run_id`, or the live release (rolled back to `to`)."""
    step = f"rollback {config.name}"
    if failed_run_id:
        release = ledger.by_flow_run(failed_run_id)
        if release is None or release.environment != config.name:
            raise InvalidInput(step, f"no deploy of {config.name} with run id {failed_run_id!r} in the ledger",
                               "check the run id; `deployctl status` lists the releases")
        if release.outcome == "running":
            # A crashed run never wrote its outcome; we hold its lock now, so it is dead.
            changed = release.code_changed or release.migration_started
            ledger.finish(release.id, "failed" if changed else "aborted", step=release.phase,
                          error="the deploy run crashed" + ("" if changed else " before changing anything"))
            release = ledger.get(release.id)
        return release
    live = ledger.last_succeeded(config.name)
    if live is None:
        raise InvalidInput(step, f"the ledger has no succeeded release of {config.name} to roll back",
                           "nothing was changed; roll back by hand if the app was deployed another way")
    if to:
        fetch_release(config)
        sha = resolve(config, to)
        known = {r.target_sha for r in ledger.releases(config.name, limit=1000) if r.outcome == "succeeded"}
        known |= {r.previous_sha for r in ledger.releases(config.name, limit=1000) if r.outcome == "succeeded"}
        if sha not in known or sha == live.target_sha:
            raise InvalidInput(step, f"{to} ({sha[:12]}) is not a release that was live before {live.ref}",
                               "pick a succeeded release from `deployctl status`; failed ones are never targets")
        if sha != live.previous_sha:
            raise InvalidInput(step, f"{to} is older than the release before {live.ref}",
                               f"roll back one release at a time: first to {str(live.previous_sha)[:12]}")
    return live


def never_served(config: EnvironmentConfig, ledger: Ledger, subject: Release) -> bool:
    """Every process of the app started before `subject` checked out its code: it never served."""
    checkout = ledger.step_started_at(subject.id, "pull-release")
    return checkout is not None and started_before(config, checkout.timestamp())


def code_before_database(config: EnvironmentConfig, plan: RollbackPlan) -> bool:
    """Without a maintenance mode traffic keeps flowing through the rollback. When the release's
    migrations only added to the schema, the previous code works on it as it is: it comes back first,
    and the database is undone under it, so the new code never meets the old schema. Otherwise (or with
    maintenance on) the database goes first, as the runbook lists it."""
    if config.service.maintenance_on_command or not plan.code or not plan.expand_only:
        return False
    if plan.database not in ("downgrade", "restore"):
        return False
    get_run_logger().info("No maintenance mode, and the release's migrations only added to the schema: the "
                          "previous release comes back first, then the database is undone (%s).", plan.database)
    return True


def undo_database(config: EnvironmentConfig, plan: RollbackPlan, app_name: str, restoring: RestorePolicy) -> None:
    url = resolve_database_url(config)
    end_orphaned_sessions(url, "deploy-")
    if plan.database == "verify":
        try:
            verify_database_revision(config, plan.to_revision)
            return
        except MigrationFailed as exc:
            get_run_logger().warning("%s; restoring the backup instead.", exc.cause)
    if plan.database == "downgrade" and plan.from_sha:
        tree = add_worktree(config, plan.from_sha, config.state_dir / "worktrees" / f"{config.name}-rollback")
        try:
            if config.dependencies is not None:  # its scripts run in its own environment; kept, else made again
                ensure_environment(config, config.app_dir(tree), step="downgrade database")
            downgrade_database(config, tree, plan.to_revision, app_name)
            return
        except (MigrationFailed, PreflightError) as exc:
            get_run_logger().warning("Downgrade failed (%s); restoring the backup instead.", exc.cause)
        finally:
            remove_worktree(config, tree)
    if plan.database in ("verify", "downgrade", "restore"):
        if plan.backup_tag is None:
            raise RollbackFailed("restore backup", "the release took no backup", "restore the database by hand")
        restore_allowed(config, plan.backup_tag, automatic=restoring.automatic,
                        allow_data_loss=restoring.allow_data_loss)
        restore_database(config, plan.backup_tag)


def _finish(config: EnvironmentConfig, ledger: Ledger, record_id: int, subject: Release | None,
            plan: RollbackPlan | None, outcome: str, message: str, step: str | None = None,
            error: DeployError | None = None) -> str:
    ledger.finish(record_id, "noop" if outcome == "noop" else ("succeeded" if outcome == "rolled_back" else "failed"),
                  step=step, error=None if outcome != "rollback_failed" else message)
    if subject is not None and outcome in ("rolled_back", "rollback_failed"):
        ledger.update(subject.id, outcome=outcome, finished_at=subject.finished_at or datetime.now(timezone.utc))
    if outcome == "rolled_back":
        notify(config, f"Rollback of {config.name} done", message)
    elif outcome == "rollback_failed":
        state, next_step = failure_advice(config, error, current_sha(config.source.workspace))
        notify(config, f"ALERT: rollback of {config.name} failed", f"{message}\n" + impact(
            step or "rollback", state, next_step), alert=True)
    get_run_logger().info(message)
    publish_rollback(ledger, record_id, outcome, message)
    get_run_logger().info("Metrics: %s.", publish_metrics(config, ledger))
    return message


def failure_advice(config: EnvironmentConfig, error: DeployError | None, live: str) -> tuple[str, str]:
    """What a failed rollback leaves behind and what to do next, by its cause. A rollback refused its
    lock or its input changed nothing, so restoring a backup would be wrong advice there: the lock's
    holder has to end first, or the input has to be corrected."""
    unchanged = f"{config.name} is at {live[:12]}, untouched by this rollback (no maintenance, no restore)"
    if isinstance(error, LockHeld):
        return unchanged, (f"{error.cause}: wait for that run to end, or cancel it in the Prefect UI (its lock is "
                           f"freed then), then run rollback/{config.name} again")
    if isinstance(error, InvalidInput):
        return unchanged, f"{error.action}, then run rollback/{config.name} again"
    return (f"{config.name} is at {live[:12]}; maintenance mode is still on if it was turned on",
            "nothing more is tried automatically: restore by hand from the backup named in the ledger "
            "(`deployctl status`)")
