"""production-deployment: the team's runbook, carried out.

    verify-prerequisites            merged to main · tests pass · security scan · migrations tested · staging verified
                                    ([fleet]: once the release is resolved, every host's run started on its
                                    queue, to stand by for its turn while the rest runs)
    approvals                       team lead and product owner, two different people (production)
    pre-deployment-verification     step 1 staging health · step 2 migration status · step 3 backup · baseline
    deployment-execution            step 6 environment · step 4 code · step 5 migrations · restart · startup log
    post-deployment-verification    step 7 health · step 8 critical paths · step 9 performance
    success criteria                evaluated from the ledger; summary and table artifacts; notifications

Parameters: `environment` (a file in deployments/), `ref` (branch, tag or SHA; default main),
`dry_run` (every read-only check, no change, no backup), `reason`, `force` (redeploy the live SHA).
Everything the deploy does is written to the ledger as it happens; the outcome is one of
succeeded, failed, aborted (nothing changed), noop (already live, or a dry run).
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Any

from prefect import Flow, flow
from prefect.client.schemas.objects import FlowRun
from prefect.deployments import run_deployment
from prefect.exceptions import ObjectNotFound
from prefect.logging.loggers import flow_run_logger
from prefect.runtime import flow_run as current_run
from prefect.states import State

from deployments.config import EnvironmentConfig, load_environment
from deployments.errors import DeployError
from deployments.logs import install_log_filters
from deployments.secrets import resolve_app_environment
from flows.deployment_execution import deployment_execution
from flows.post_deployment_verification import post_deployment_verification
from flows.pre_deployment_verification import pre_deployment_verification
from flows.rollback import launch_rollback
from flows.verify_prerequisites import Prerequisites, release_tree, verify_prerequisites
from records.deploy_record import DeployRecord
from records.ledger import Ledger
from records.reporting import rename_run
from tasks.approvals import obtain_approvals, release_brief
from tasks.fleet import hosts_standing_by
from tasks.locks import deploy_lock
from tasks.source import ResolvedRelease, remove_worktree, validate_ref


def run_name(sha: str | None = None) -> str:
    """What the run deploys, so the runs list reads as a deploy history: `production: v2` when it starts,
    `production: v2 (688dd2f0a0d1)` once the ref is resolved (`resolved` renames the run)."""
    params = current_run.parameters
    ref = str(params.get("ref", "main"))
    what = ref if sha is None else (sha[:12] if sha.startswith(ref) else f"{ref} ({sha[:12]})")
    mode = " (dry run)" if params.get("dry_run") else " (forced)" if params.get("force") else ""
    return f"{params['environment']}: {what}{mode}"


def check_configuration(config: EnvironmentConfig) -> EnvironmentConfig | None:
    """What the deploy will need from configuration, before it writes, locks or fetches anything:
    a secret that does not resolve, or a staging file that does not load, fails here as a ConfigError.
    Returns staging's configuration, loaded once for the whole run (None when there is no staging)."""
    resolve_app_environment(config)
    name = config.prerequisites.staging_environment
    return load_environment(name) if name else None


def start_rollback(flow: Flow[..., Any], flow_run: FlowRun, state: State) -> None:
    """on_failure / on_crashed: a deploy that changed something is rolled back by its own deployment
    (a run of its own, visible and cancellable), or in this process when there is none.
    Prefect passes the arguments by name; on a crash it calls this in a fresh process."""
    logger = flow_run_logger(flow_run, flow)
    environment = str(flow_run.parameters.get("environment"))
    try:
        config = load_environment(environment)
    except DeployError:
        return  # refused before anything ran
    ledger = Ledger.for_state_dir(config.state_dir)
    release = ledger.by_flow_run(str(flow_run.id))
    if release is None:
        return
    if release.dry_run or not (release.code_changed or release.migration_started):
        if release.outcome == "running":  # crashed before changing anything: nothing to undo
            ledger.finish(release.id, "aborted", step=release.phase,
                          error=f"the deploy run {state.name.lower()} before changing anything")
        return
    if release.outcome in ("rolled_back", "rollback_failed") or not config.rollback.automatic:
        logger.warning("Not rolling back automatically (%s); run rollback/%s by hand.",
                       release.outcome if config.rollback.automatic else "rollback.automatic is off", environment)
        return
    launch_rollback(environment, str(flow_run.id), f"automatic: deploy {flow_run.name} ended {state.name}",
                    key=f"rollback-{flow_run.id}", logger=logger, as_subflow=False)


@flow(name="production-deployment", flow_run_name=run_name, log_prints=True,
      on_failure=[start_rollback], on_crashed=[start_rollback])
def production_deployment(environment: str, ref: str | int = "main", dry_run: bool = False, reason: str = "",
                          force: bool = False) -> str:
    """Deploy a ref to an environment, as the runbook says.

    Args:
        environment: The environment to deploy to: a file in the environments directory.
        ref: What to deploy: a branch, a tag or a SHA merged to the environment's branch. (An all-digit
            short SHA typed as `--param ref=1234567` arrives as a number; it is read as the text it was.)
        dry_run: Run every read-only check and show the plan; change nothing, take no backup.
        reason: Why; shown to the approvers, in the notifications, the ledger and the summary.
        force: Deploy again even if this SHA is live already (otherwise that is a no-op).
    """
    install_log_filters()  # first: a refused ref or environment name is then one line, without traceback
    config = load_environment(environment)  # the one read of the file; every phase is given this object
    ref = validate_ref(str(ref))
    staging = check_configuration(config)
    record = DeployRecord(config, ref=ref, dry_run=dry_run, reason=reason)
    tree = release_tree(config, record.release_id)
    with record.recorded(cleanup=lambda: remove_worktree(config, tree)), deploy_lock_unless(dry_run, record):
        with record.phase("verify-prerequisites"):
            prerequisites = verify_prerequisites(config=config, staging=staging, ref=ref,
                                                 release_id=record.release_id, force=force,
                                                 start_hosts=config.fleet is not None and not dry_run)
            resolved(record, prerequisites)
        release = prerequisites.release
        if prerequisites.noop:
            return record.finish("noop", f"{release.short} is already live; nothing to do")
        # A fleet's hosts stand by from the prerequisites on: their workers started the runs' processes
        # (and built the release's environment) while the checks and the approvals ran, and a host that
        # cannot be reached stops the deploy before the database changes.
        with hosts_standing_by(config, release.sha, record.release_id, wanted=not dry_run,
                               runs=prerequisites.hosts) as hosts:
            if config.requires_approval and not dry_run:
                with record.phase("approvals"):
                    approvals = obtain_approvals(config, approval_brief(record, prerequisites, staging))
                    record.update(approvals=[a.as_dict() for a in approvals])
            with record.phase("pre-deployment-verification"):
                pre = pre_deployment_verification(config=config, staging=staging, release_id=record.release_id,
                                                  sha=release.sha, dry_run=dry_run, run_id=record.run_id,
                                                  migrations=prerequisites.migrations)
            if dry_run:
                return record.finish("noop", plan(config, release, pre.migrations.describe()))
            with record.phase("deployment-execution"):
                deployment_execution(config=config, release_id=record.release_id, sha=release.sha,
                                     application_name=record.app_name, hosts=hosts)
        with record.phase("post-deployment-verification"):
            post_deployment_verification(config=config, sha=release.sha, baseline=pre.baseline)
    return record.finish("succeeded", f"{release.short} is live in {environment}", watch=lambda: schedule_watch(record))


def deploy_lock_unless(dry_run: bool, record: DeployRecord) -> AbstractContextManager[None]:
    """The deploy lock, held from the prerequisites to the end (approvals included); a dry run changes
    nothing and takes none."""
    if dry_run:
        return nullcontext()
    return deploy_lock(record.config.name, record.ledger, record.release_id, holder_run_id=record.run_id)


def resolved(record: DeployRecord, prerequisites: Prerequisites) -> None:
    """The ref is a SHA now: the ledger learns what is deployed over what (code, and with [dependencies]
    the environment), the run is renamed for it."""
    release = prerequisites.release
    name = rename_run(record.run_id, run_name(release.sha))
    record.update(target_sha=release.sha, previous_sha=release.live_sha, commit_time=release.committed_at,
                  flow_run_name=name, environment_before=prerequisites.live_environment,
                  environment_after=prerequisites.environment)


def approval_brief(record: DeployRecord, prerequisites: Prerequisites, staging: EnvironmentConfig | None) -> str:
    return release_brief(record.config, prerequisites.release, prerequisites.migrations,
                         record.ledger.steps(record.release_id), record.release.reason, staging=staging,
                         lint=prerequisites.lint, rehearsal=prerequisites.rehearsal).markdown()


def plan(config: EnvironmentConfig, release: ResolvedRelease, migrations: str) -> str:
    return (f"dry run: would deploy {release.short} over {release.live_sha[:12]}; {migrations}; "
            f"approvals needed: {', '.join(config.approvals.required_roles) or 'none'}")


def schedule_watch(record: DeployRecord) -> str:
    """The post-deploy watch, as its own run linked to this one (once: the key is this run's id)."""
    config, logger = record.config, record.logger
    if not config.watch.enabled:
        return "off (watch.enabled = false)"
    name = f"post-deploy-watch/{config.name}"
    try:
        run = run_deployment(name, parameters={"environment": config.name, "deploy_run_id": record.run_id},
                             timeout=0, idempotency_key=f"watch-{record.run_id}")
    except ObjectNotFound:
        logger.warning("No %s deployment on this server: the release is not watched. `make deploy` "
                       "registers it; or run the post-deploy-watch flow by hand.", name)
        return f"not scheduled: no {name} deployment"
    minutes = config.watch.duration_seconds / 60
    logger.info("Post-deploy watch scheduled: run %s, %g minutes.", run.name, minutes)
    record.update(watch={"run_id": str(run.id), "outcome": "scheduled"})
    return f"run {run.name} watches the release for {minutes:g} minutes"
