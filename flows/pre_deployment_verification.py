"""pre-deployment-verification: runbook phase 1.

    check-staging-health     step 1: staging answers HTTP 200, every service operational
    check-migrations         step 2: the pending migrations, or "No pending migrations"
    backup-database          step 3: tagged pre-deployment-YYYYmmdd-HHMMSS, verified
    record-baseline          the performance phase 3 and the post-deploy watch compare against
"""

from __future__ import annotations

from dataclasses import dataclass

from prefect import flow

from deployments.config import EnvironmentConfig
from deployments.secrets import resolve_database_url
from flows.verify_prerequisites import release_tree
from tasks.backups import Manifest, backup_database
from tasks.health import check_staging_health
from records.ledger import Ledger
from tasks.migrations import MigrationStatus, check_migrations, database_revision
from tasks.monitoring import Baseline, record_baseline


@dataclass(frozen=True)
class PreDeployment:
    migrations: MigrationStatus
    revision_before: str | None
    backup: Manifest | None
    baseline: Baseline | None  # None: the app publishes no metrics (monitoring.source = "none")


@flow(name="pre-deployment-verification", flow_run_name="{config.name}: pre-deployment verification")
def pre_deployment_verification(config: EnvironmentConfig, staging: EnvironmentConfig | None, release_id: int,
                                sha: str, dry_run: bool = False, run_id: str | None = None,
                                migrations: MigrationStatus | None = None) -> PreDeployment:
    """`staging` None: the environment is its own staging (step 1 checks its health)."""
    ledger = Ledger.for_state_dir(config.state_dir)
    check_staging_health(staging or config)
    # Approvals may have taken an hour: the live revision is read again, the release's scripts only if it moved.
    migrations = check_migrations(config, release_tree(config, release_id), migrations)
    revision = database_revision(resolve_database_url(config))
    ledger.update(release_id, db_revision_before=revision, migrations=[
        {"revision": p.revision, "message": p.message, "has_downgrade": p.has_downgrade, "expand_only": p.expand_only,
         "kind": p.kind, "findings": list(p.findings)}
        for p in migrations.pending])
    backup = None
    if not dry_run:
        backup = backup_database(config, revision, ledger.get(release_id).previous_sha or sha, run_id,
                                 protected=_protected_backups(ledger, config.name))
        ledger.update(release_id, backup_tag=backup.tag, backup_manifest=backup.to_json())
    recorded = record_baseline(config)
    baseline = recorded if isinstance(recorded, Baseline) else None
    ledger.update(release_id, baseline=baseline.__dict__ if baseline else None)
    return PreDeployment(migrations, revision, backup, baseline)


def _protected_backups(ledger: Ledger, environment: str) -> set[str]:
    """The last good release's backup and those of unfinished releases are never pruned."""
    keep = {r.backup_tag for r in ledger.running(environment) if r.backup_tag}
    last_good = ledger.last_succeeded(environment)
    if last_good is not None and last_good.backup_tag:
        keep.add(last_good.backup_tag)
    return keep
