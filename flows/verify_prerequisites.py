"""verify-prerequisites: the runbook's prerequisites, before anything in the environment changes.

    fetch-release · resolve-release      the ref, as a 40-hex SHA; a deploy of the live SHA is a noop
    start-host-runs                      [fleet]: every host's run started, to stand by for its turn; as
                                         soon as the SHA is resolved (and is not the live one), created
                                         while the checks below run
    install-dependencies                 the release's own environment ([dependencies]), built or reused
    check-migrations                     what is pending, read with the release's scripts (and its SQL)
    check-merged-to-main                 code changes merged to the release branch
    check-workspace                      no hand-made changes a deploy would overwrite
    run-release-tests                    the release's own tests, on a scratch worktree of the SHA
    run-security-scan                    no critical (high severity) finding
    lint-migrations                      each pending revision's SQL: expand, contract or destructive; squawk
    test-migrations                      one head; upgrade, downgrade, upgrade on a copy of the live data,
                                         each revision's time and strongest lock measured (max_lock_seconds)
    verify-staging                       staging healthy and shown to serve the same SHA (production only)

Approval, the last prerequisite, pauses the deploy run itself (see production_deployment).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from uuid import UUID

from prefect import flow
from prefect.logging import get_run_logger

from deployments.config import EnvironmentConfig
from deployments.errors import DeployError, PreflightError
from tasks.dependencies import install_dependencies
from tasks.fleet import HostsStarting
from tasks.health import check_staging_health
from tasks.migration_lint import LintReport, lint_migrations, with_kinds
from tasks.migrations import MigrationStatus, Rehearsal, check_migrations, test_migrations
from tasks.quality import run_release_tests, run_security_scan
from tasks.release_environments import ReleaseEnvironment, live_environment, release_environment
from tasks.served_version import VersionNotVerified, VersionUnreadable
from tasks.source import (
    ResolvedRelease,
    add_worktree,
    check_merged_to_main,
    check_workspace,
    fetch_release,
    resolve_release,
)


@dataclass(frozen=True)
class Prerequisites:
    release: ResolvedRelease
    noop: bool
    pending_migrations: list[str]
    migrations: MigrationStatus | None = None  # the live revision and what is pending, for the approvers
    environment: str | None = None  # with [dependencies]: the release's environment ...
    live_environment: str | None = None  # ... and the live one
    lint: LintReport | None = None  # what each pending revision does, and squawk's findings
    rehearsal: Rehearsal | None = None  # each revision measured on a copy (None: no rehearsal)
    hosts: dict[str, UUID | None] | None = None  # a fleet's host runs, standing by for their turns


def release_tree(config: EnvironmentConfig, release_id: int) -> Path:
    """The scratch worktree of the release, kept until the deploy ends (phase 1 reads it too)."""
    return config.state_dir / "worktrees" / f"{config.name}-{release_id}"


@flow(name="verify-prerequisites", flow_run_name="{config.name}: prerequisites for {ref}")
def verify_prerequisites(config: EnvironmentConfig, staging: EnvironmentConfig | None, ref: str, release_id: int,
                         force: bool = False, start_hosts: bool = False) -> Prerequisites:
    """`start_hosts`: a [fleet] deploy's; its hosts' runs are started as soon as the release is resolved
    to another SHA than the live one (else once check-migrations finds something to do), created while
    the checks run, and handed over in `Prerequisites.hosts`."""
    fetch_release(config)
    release = resolve_release(config, ref)
    fleet = start_hosts and config.fleet is not None
    # A fleet's hosts start their runs as soon as the deploy is sure to change something (another SHA than
    # the live one), beside the checks below: each worker starts its process and builds the release's
    # environment on its host while the checks and the approvals run. The deploy stands them down if it
    # stops before their turn.
    starting = HostsStarting(config, release.sha, release_id) if fleet and release.sha != release.live_sha else None
    try:
        tree = add_worktree(config, release.sha, release_tree(config, release_id))
        install_dependencies(config, tree)
        environments = {} if config.dependencies is None else {
            "environment": release_environment(config, config.app_dir(tree)).key,
            "live_environment": _key(live_environment(config))}
        status = check_migrations(config, tree, render=True)
        if release.sha == release.live_sha and not status.pending and not force:
            return Prerequisites(release, noop=True, pending_migrations=[], migrations=with_kinds(status, None),
                                 **environments)
        if fleet and starting is None:  # the live SHA again: its pending migrations, or forced
            starting = HostsStarting(config, release.sha, release_id)
        check_merged_to_main(config, release.sha)
        check_workspace(config)
        run_release_tests(config, tree)
        run_security_scan(config, tree)
        lint = lint_migrations(config, tree, status) if status.pending else None
        status = with_kinds(status, lint)
        rehearsal = None
        if config.prerequisites.migration_rehearsal:
            rehearsal = test_migrations(config, tree, config.state_dir / "rehearsal", status)
        if staging is not None:
            verify_staging(staging, release.sha, config.prerequisites.require_staging_version)
        hosts = starting.runs() if starting is not None else None
    except BaseException:
        if starting is not None:
            starting.stand_down("the deploy's prerequisites failed")
        raise
    return Prerequisites(release, noop=False, pending_migrations=[p.revision for p in status.pending],
                         migrations=status, lint=lint, rehearsal=rehearsal, hosts=hosts, **environments)


def _key(environment: ReleaseEnvironment | None) -> str | None:
    return environment.key if environment is not None else None


def verify_staging(staging: EnvironmentConfig, sha: str, require_version: bool = True) -> None:
    """Prerequisite: staging deployment completed and verified, with this very SHA. A staging whose
    served SHA nothing can show fails it, unless `require_version` is off: then it passes, and the
    step and the run log say it was not verified."""
    try:
        report = check_staging_health.with_options(name="verify-staging", retries=0)(
            staging, sha, unverified_ok=not require_version)
    except DeployError as exc:
        raise staging_not_ready(staging.name, sha, exc) from None
    if not report.served.verified:
        get_run_logger().warning("verify staging: %s: %s; accepted, as prerequisites.require_staging_version = "
                                 "false", staging.name, report.served.describe())


def staging_not_ready(staging_name: str, sha: str, exc: DeployError) -> PreflightError:
    """The failed prerequisite, with what to do about its cause."""
    if isinstance(exc, VersionNotVerified):
        action = (f"set health.version_command in {staging_name}'s file, or set "
                  "prerequisites.require_staging_version = false to accept an unverified staging")
    elif isinstance(exc, VersionUnreadable):
        action = f"{exc.action} (in {staging_name}'s file)"
    # Deploying to staging first is the fix only when staging serves another SHA, not when it is down.
    elif f"expected {sha[:12]}" in exc.cause:
        action = f"deploy {sha[:12]} to {staging_name} and verify it first"
    else:
        action = f"bring {staging_name} back to healthy (read its app log), then deploy again"
    return PreflightError("verify staging", f"{staging_name}: {exc.cause}", f"{action}; nothing was changed")
