"""The errors a deploy can end with. Callers catch the narrowest type they can act on.

    DeployError                  every failure the orchestrator reports; message = step, cause, next action
     ├─ ConfigError              an environment file or its secrets are wrong; nothing ran
     ├─ InvalidInput             a parameter (ref, environment name) was refused before anything was touched
     ├─ PreflightError           a prerequisite or pre-deployment check failed; production untouched
     │   └─ ApprovalRejected     an approver said no, or nobody answered in time
     ├─ LockHeld                 another deploy or rollback holds the environment
     ├─ BackupFailed             the backup could not be written or verified; nothing migrated
     ├─ MigrationFailed          alembic failed; the database may need the backup
     ├─ ServiceError             the app could not be (re)started or reloaded
     ├─ HealthCheckFailed        the app answered unhealthy, the wrong version, or not at all
     └─ RollbackFailed           the rollback could not bring the previous release back
"""

from __future__ import annotations


class DeployError(Exception):
    """A failure with a message that says the step, the cause and the next action."""

    def __init__(self, step: str, cause: str, action: str) -> None:
        self.step = step
        self.cause = cause
        self.action = action
        super().__init__(f"{step}: {cause}. {action}")


class ConfigError(DeployError):
    pass


class InvalidInput(DeployError):
    pass


class PreflightError(DeployError):
    pass


class ApprovalRejected(PreflightError):
    pass


class LiveDatabaseTouched(PreflightError):
    """A step meant to touch only a copy (the rehearsal) changed the live database: production is no
    longer as the deploy found it, though no release was deployed. Always an alert."""

    changed_production = True


class LockHeld(DeployError):
    pass


class BackupFailed(DeployError):
    pass


class MigrationFailed(DeployError):
    pass


class ServiceError(DeployError):
    pass


class HealthCheckFailed(DeployError):
    pass


class RollbackFailed(DeployError):
    pass
