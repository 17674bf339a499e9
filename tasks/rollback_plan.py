"""What a rollback must undo, decided from the ledger, never from guesses.

| situation                                              | database                       | code   |
|--------------------------------------------------------|--------------------------------|--------|
| the deploy failed before code or database changed      | nothing                        | no     |
| its migration failed on PostgreSQL (one transaction)   | verify the revision            | revert |
| its migration failed on SQLite, or was cut off (crash) | restore the verified backup    | revert |
| migrated fine, the new code is unhealthy               | downgrade with its own scripts | revert |
| ... and a revision has no downgrade                    | restore the verified backup    | revert |
| the release is already rolled back                     | nothing (idempotent)           | no     |

A downgrade that raises falls back to the backup (the flow does that); a rolled-back version that
is unhealthy too ends the rollback as `rollback_failed`: it never loops.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.engine import make_url

from deployments.config import EnvironmentConfig
from deployments.errors import RollbackFailed
from deployments.secrets import resolve_database_url
from tasks.steps import read_step
from records.ledger import Ledger, Release, StepRecord
from tasks.migrations import database_revision

DONE = ("rolled_back", "rollback_failed", "aborted", "noop")


@dataclass(frozen=True)
class RollbackPlan:
    release_id: int | None
    from_sha: str | None
    to_sha: str | None
    to_revision: str | None
    database: str  # none | verify | downgrade | restore
    code: bool
    backup_tag: str | None
    reason: str
    expand_only: bool = False  # every migration undone only added: the previous code runs on either schema

    @property
    def nothing_to_do(self) -> bool:
        return self.database == "none" and not self.code

    def describe(self) -> str:
        if self.nothing_to_do:
            return f"nothing to undo: {self.reason}"
        database = {"verify": f"verify the database is still at {self.to_revision or 'base'}",
                    "downgrade": f"downgrade the database to {self.to_revision or 'base'}",
                    "restore": f"restore backup {self.backup_tag}",
                    "none": "database untouched"}[self.database]
        code = f"check out {str(self.to_sha)[:12]}" if self.code else "code untouched"
        return f"{database}; {code} ({self.reason})"


def decide(release: Release, steps: list[StepRecord], backend: str, live_revision: str | None,
           fleet: bool = False) -> RollbackPlan:
    """The plan for undoing `release`, a deploy that failed (or is being undone by hand). On a fleet, a
    rollback that failed part way (a host lost with its worker) is run again for its hosts alone, once
    the database is back: the hosts still on the release are rolled back, the others left as they are."""
    migration = next((s.status for s in reversed(steps) if s.name == "run-migrations"), None)
    pending = release.migrations or []
    base = dict(release_id=release.id, from_sha=release.target_sha, to_sha=release.previous_sha,
                to_revision=release.db_revision_before, backup_tag=release.backup_tag,
                expand_only=bool(pending) and all(p.get("expand_only") for p in pending))
    if fleet and release.outcome == "rollback_failed" and live_revision == release.db_revision_before:
        return RollbackPlan(**base, database="verify", code=True,
                            reason="its rollback failed with the database already back: the hosts again")
    if release.outcome in DONE:
        return RollbackPlan(**base, database="none", code=False, reason=f"the release is already {release.outcome}")
    if not release.code_changed and not release.migration_started:
        return RollbackPlan(**base, database="none", code=False, reason="it failed before changing anything")
    code = True
    if not release.migration_started:
        return RollbackPlan(**base, database="none", code=code, reason="only the code changed")
    if migration == "completed":
        if not pending:
            return RollbackPlan(**base, database="verify", code=code, reason="the release had no migration")
        if all(p.get("has_downgrade") for p in pending):
            reason = ("undoing a release that succeeded" if release.outcome == "succeeded"
                      else "migrated fine, the new code failed")
            return RollbackPlan(**base, database="downgrade", code=code, reason=reason)
        return RollbackPlan(**base, database="restore", code=code, reason="a migration has no downgrade")
    if migration == "failed" and backend == "postgresql" and live_revision == release.db_revision_before:
        return RollbackPlan(**base, database="verify", code=code,
                            reason="the migration failed in one transaction that PostgreSQL rolled back")
    return RollbackPlan(**base, database="restore", code=code,
                        reason=f"the migration {'failed' if migration == 'failed' else 'was cut off'} on "
                               f"{backend}: the schema may be half-changed")


@read_step("choose-rollback-plan", retries=0)
def choose_rollback_plan(config: EnvironmentConfig, ledger: Ledger, release: Release) -> RollbackPlan:
    """Rollback: read what the deploy did, and decide what to undo."""
    url = resolve_database_url(config)
    backend = make_url(url).get_backend_name()
    live = database_revision(url)
    plan = decide(release, ledger.steps(release.id), backend, live, fleet=config.fleet is not None)
    if plan.database == "restore" and plan.backup_tag is None:
        raise RollbackFailed("choose rollback plan", "the database must be restored but the release took no backup",
                             "restore the database by hand from your own backups")
    return plan
