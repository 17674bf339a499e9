"""production-deployment: the team's runbook, carried out.

    verify-prerequisites            merged to main · tests pass · security scan · migrations tested · staging verified
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

import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

from prefect import Flow, flow
from prefect.client.schemas.objects import FlowRun
from prefect.deployments import run_deployment
from prefect.exceptions import ObjectNotFound
from prefect.logging import get_run_logger
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
from tasks.steps import recording
from tasks.approvals import obtain_approvals, release_brief
from records.ledger import Ledger
from tasks.locks import deploy_lock
from records.metrics import publish_metrics
from records.notifications import impact, notify
from records.reporting import Progress, publish, rename_run, success_criteria, summary_text
from tasks.source import remove_worktree, validate_ref


def run_name(sha: str | None = None) -> str:
    """What the run deploys, so the runs list reads as a deploy history: `production: v2` when it starts,
    `production: v2 (688dd2f0a0d1)` once the ref is resolved (`resolved` renames the run)."""
    params = current_run.parameters
    ref = str(params.get("ref", "main"))
    what = ref if sha is None else (sha[:12] if sha.startswith(ref) else f"{ref} ({sha[:12]})")
    mode = " (dry run)" if params.get("dry_run") else " (forced)" if params.get("force") else ""
    return f"{params['environment']}: {what}{mode}"


def check_configuration(config: EnvironmentConfig) -> None:
    """What the deploy will need from configuration, before it writes, locks or fetches anything:
    a secret that does not resolve, or a staging file that does not load, fails here as a ConfigError."""
    resolve_app_environment(config)
    if config.prerequisites.staging_environment:
        load_environment(config.prerequisites.staging_environment)


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
def production_deployment(environment: str, ref: str = "main", dry_run: bool = False, reason: str = "",
                          force: bool = False) -> str:
    """Deploy a ref to an environment, as the runbook says.

    Args:
        environment: The environment to deploy to: a file in the environments directory.
        ref: What to deploy: a branch, a tag or a SHA merged to the environment's branch.
        dry_run: Run every read-only check and show the plan; change nothing, take no backup.
        reason: Why; shown to the approvers, in the notifications, the ledger and the summary.
        force: Deploy again even if this SHA is live already (otherwise that is a no-op).
    """
    install_log_filters()  # first: a refused ref or environment name is then one line, without traceback
    config = load_environment(environment)
    validate_ref(ref)
    check_configuration(config)
    deploy = Deploy(config, ref, dry_run, reason)
    with deploy.recorded():
        with deploy_lock(environment, deploy.ledger, deploy.release_id, holder_run_id=deploy.run_id) if not dry_run \
                else nullcontext():
            with deploy.phase("verify-prerequisites"):
                prerequisites = verify_prerequisites(environment, ref, deploy.release_id, force)
                deploy.resolved(prerequisites)
            if prerequisites.noop:
                return deploy.finish("noop", f"{prerequisites.release.short} is already live; nothing to do")
            if config.requires_approval and not dry_run:
                with deploy.phase("approvals"):
                    deploy.approved(obtain_approvals(config, deploy.approval_brief(prerequisites)))
            with deploy.phase("pre-deployment-verification"):
                pre = pre_deployment_verification(environment, deploy.release_id, prerequisites.release.sha,
                                                  dry_run, deploy.run_id, prerequisites.migrations)
            if dry_run:
                return deploy.finish("noop", deploy.plan(prerequisites, pre.migrations.describe()))
            with deploy.phase("deployment-execution"):
                deployment_execution(environment, deploy.release_id, prerequisites.release.sha, deploy.app_name)
            with deploy.phase("post-deployment-verification"):
                post_deployment_verification(environment, prerequisites.release.sha, pre.baseline)
    return deploy.finish("succeeded", f"{prerequisites.release.short} is live in {environment}")


class Deploy:
    """The bookkeeping of one run: ledger row, phase timings, progress, notifications, summary."""

    def __init__(self, config: EnvironmentConfig, ref: str, dry_run: bool, reason: str) -> None:
        self.config = config
        self.logger = get_run_logger()
        self.ledger = Ledger.for_state_dir(config.state_dir)
        self.run_id = str(current_run.id) if current_run.id else None
        self.release_id = self.ledger.open_release(
            environment=config.name, flow_run_id=self.run_id, flow_run_name=current_run.name, ref=ref,
            reason=reason, dry_run=dry_run).id
        self.app_name = f"deploy-{(self.run_id or str(self.release_id))[:8]}"
        self.progress = Progress(config.name)
        self.timings: dict[str, float] = {}
        self.notified = False
        self._say(f"Deploy to {config.name} starting", f"ref {ref}; reason: {reason or '—'}"
                  + ("; dry run, nothing will change" if dry_run else ""))

    @contextmanager
    def recorded(self) -> Iterator[None]:
        try:
            with recording(self.ledger, self.release_id):
                yield
        except DeployError as exc:
            self._failed(exc)
            raise
        finally:
            remove_worktree(self.config, release_tree(self.config, self.release_id))

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        self.ledger.update(self.release_id, phase=name)
        started = time.monotonic()
        try:
            yield
        finally:
            self.timings[name] = round(time.monotonic() - started, 2)
            self.ledger.update(self.release_id, timings=dict(self.timings))
        self.progress.phase_done(name)
        self._say(f"Deploy to {self.config.name}: {name} done", f"in {self.timings[name]:.1f} s")

    def resolved(self, prerequisites: Prerequisites) -> None:
        release = prerequisites.release
        name = rename_run(self.run_id, run_name(release.sha))
        self.ledger.update(self.release_id, target_sha=release.sha, previous_sha=release.live_sha,
                           commit_time=release.committed_at, flow_run_name=name)

    def approved(self, approvals: list[Any]) -> None:
        self.ledger.update(self.release_id, approvals=[a.as_dict() for a in approvals])

    def approval_brief(self, prerequisites: Prerequisites) -> str:
        release = self.ledger.get(self.release_id)
        return release_brief(self.config, prerequisites.release, prerequisites.migrations,
                             self.ledger.steps(self.release_id), release.reason).markdown()

    def plan(self, prerequisites: Prerequisites, migrations: str) -> str:
        release = prerequisites.release
        return (f"dry run: would deploy {release.short} over {release.live_sha[:12]}; {migrations}; "
                f"approvals needed: {', '.join(self.config.approvals.required_roles) or 'none'}")

    def finish(self, outcome: str, message: str) -> str:
        self.logger.info(message)
        self.ledger.finish(self.release_id, outcome)
        if outcome == "succeeded":
            watch = self.schedule_watch()
            release = self.ledger.get(self.release_id)
            criteria = success_criteria(release, self.ledger.steps(self.release_id), notified=True)
            self.notified = self._say(f"Deploy to {self.config.name} succeeded: {message}",
                                      summary_text(release, criteria) + f"\nWatch: {watch}")
        else:
            self._say(f"Deploy to {self.config.name}: {outcome}", message)
        self._publish()
        return message

    def schedule_watch(self) -> str:
        """The post-deploy watch, as its own run linked to this one (once: the key is this run's id)."""
        if not self.config.watch.enabled:
            return "off (watch.enabled = false)"
        name = f"post-deploy-watch/{self.config.name}"
        try:
            run = run_deployment(name, parameters={"environment": self.config.name, "deploy_run_id": self.run_id},
                                 timeout=0, idempotency_key=f"watch-{self.run_id}")
        except ObjectNotFound:
            self.logger.warning("No %s deployment on this server: the release is not watched. `make deploy` "
                                "registers it; or run the post-deploy-watch flow by hand.", name)
            return f"not scheduled: no {name} deployment"
        minutes = self.config.watch.duration_seconds / 60
        self.logger.info("Post-deploy watch scheduled: run %s, %g minutes.", run.name, minutes)
        self.ledger.update(self.release_id, watch={"run_id": str(run.id), "outcome": "scheduled"})
        return f"run {run.name} watches the release for {minutes:g} minutes"

    def _failed(self, exc: DeployError) -> None:
        release = self.ledger.get(self.release_id)
        changed = release.code_changed or release.migration_started
        outcome = "failed" if changed else "aborted"
        self.ledger.finish(self.release_id, outcome, step=exc.step, error=str(exc))
        if not changed:
            state, next_step = (f"unchanged: {self.config.name} still serves {str(release.previous_sha or 'the live release')[:12]}",
                                "nothing to undo; fix the cause and deploy again")
        elif self.config.rollback.automatic:
            state, next_step = ("partly changed (the new code or migrations may be in place)",
                                "the automatic rollback restores the previous release, code and database; "
                                "its own messages follow")
        else:
            state, next_step = ("partly changed (the new code or migrations may be in place)",
                                f"rollback.automatic is off: run rollback/{self.config.name} by hand now")
        self.logger.error("%s", exc)
        self._say(f"Deploy to {self.config.name} {outcome} at {exc.step}", f"{exc}\n{impact(exc.step, state, next_step)}",
                  alert=changed)
        self._publish()

    def _say(self, subject: str, body: str, alert: bool = False) -> bool:
        return notify(self.config, subject, body, alert=alert)

    def _publish(self) -> None:
        self.logger.info("Metrics: %s.", publish_metrics(self.config, self.ledger))
        release = self.ledger.get(self.release_id)
        publish(self.ledger, self.release_id, success_criteria(release, self.ledger.steps(self.release_id),
                                                               self.notified))
