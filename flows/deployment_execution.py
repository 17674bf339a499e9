"""deployment-execution: runbook phase 2, in the order that never runs new code on an old schema.

    wait-for-hosts           [fleet]: every host's run (started in the prerequisites) taken by its worker and
                             standing by; a host out of reach stops the deploy here, nothing changed
    verify-environment       step 6: variables present, secrets resolved from their sources
    pull-release             step 4: check out the resolved SHA
    switch-environment       ... and make its own environment live ([dependencies]; built in the prerequisites)
    run-migrations           step 5: upgrade to the release's head
    roll-batch-<n>           [fleet]: instead of the three steps below, on each host by its own worker,
                             batch by batch, drained from the load balancer meanwhile (tasks/fleet)
    check-canary             the release, started beside production on a spare port, passes health and
                             the critical paths before it takes any traffic ([service.canary])
    restart-application      step 4: graceful reload; a release that cannot start leaves the old one serving
    watch-startup-logs       step 4's warning: no error pattern in the log for the grace time

The runbook restarts before migrating; for a moment that runs new code on the old schema. Like
Heroku's release phase, Fly's release_command and capistrano-rails, we migrate first, then restart.
The ledger is told before each change, so a crash at any point knows what may need undoing.
"""

from __future__ import annotations

from uuid import UUID

from prefect import flow

from deployments.config import EnvironmentConfig
from deployments.secrets import resolve_database_url
from tasks.canary import check_canary
from tasks.dependencies import switch_environment
from tasks.fleet import roll_fleet, wait_for_hosts
from records.ledger import Ledger
from tasks.migrations import database_revision, run_migrations
from tasks.service import log_offset, restart_application, verify_environment, watch_startup_logs
from tasks.source import pull_release


@flow(name="deployment-execution", flow_run_name="{config.name}: deployment execution")
def deployment_execution(config: EnvironmentConfig, release_id: int, sha: str, application_name: str,
                         hosts: dict[str, UUID | None] | None = None) -> str | None:
    """Phase 2. `hosts`: a fleet's host runs, started and standing by (tasks/fleet.standing_by)."""
    ledger = Ledger.for_state_dir(config.state_dir)
    if config.fleet is not None and hosts is not None:  # every host reachable, before anything changes
        wait_for_hosts(config, hosts, rollback=False)
    verify_environment(config)
    ledger.update(release_id, code_changed=True)
    pull_release(config, sha)
    if config.dependencies is not None:
        switch_environment(config)
    ledger.update(release_id, migration_started=True)
    run_migrations(config, application_name)
    revision = database_revision(resolve_database_url(config))
    ledger.update(release_id, db_revision_after=revision)
    if config.fleet is not None:  # the database is shared: migrated once, above, from the deploy's checkout
        assert hosts is not None  # started by the prerequisites, waited for above
        roll_fleet(config, sha, release_id, hosts, waited_for=True)
        return revision
    check_canary(config, sha)
    offset = log_offset(config)
    restart_application(config)
    watch_startup_logs(config, offset)
    return revision
