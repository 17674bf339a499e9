"""A rollback never silently loses data: before restoring a backup it measures what the restore would
discard (tasks/writes_since), and when that is anything:

- an automatic rollback does not restore. Maintenance stays on (the database is as the failed release
  left it, which its code expects), an alert gives the figures, and the run pauses for a decision in a
  typed form, answered from the UI's Resume button or `deployctl decide`:
    restore             restore the backup anyway, discarding what the form listed; the rollback goes on
    downgrade-by-hand   nothing more is done: maintenance stays on for someone to undo the schema by hand
    keep-release        traffic resumes on the failed release as it is; nothing is undone
  No answer within rollback.decision_timeout_seconds counts as downgrade-by-hand: nothing is discarded.
- a rollback started by hand refuses to restore unless it was given allow_data_loss = true.
When nothing was written, the backup is restored as before, and the step says so.
"""

from __future__ import annotations

from typing import Literal

from prefect.exceptions import FlowPauseTimeout
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput
from prefect.logging import get_run_logger
from prefect.runtime import flow_run as current_run
from pydantic import Field, field_validator

from deployments.config import EnvironmentConfig
from deployments.errors import InvalidInput, RollbackFailed
from records.notifications import notify
from tasks.approvals import full_name
from tasks.writes_since import WrittenSince, measure_writes_since_backup

Choice = Literal["restore", "downgrade-by-hand", "keep-release"]


class DataLossDecision(RunInput):
    """Restoring the backup would discard data written since it was taken. Decide what the rollback does."""

    decision: Choice = Field(description="restore: discard what is listed above. downgrade-by-hand: stay in "
                                         "maintenance for you. keep-release: serve the failed release as it is.")
    decided_by: str = Field(min_length=2, max_length=80, description="Your full name, as the ledger records it.")
    comment: str = Field("", max_length=500, description="Why; everyone notified reads it.")

    @field_validator("decided_by")
    @classmethod
    def _name(cls, value: str) -> str:
        return full_name(value)


class NotRestored(Exception):
    """The rollback stops short of the restore, as decided; the flow ends it accordingly."""

    def __init__(self, decision: Choice, written: WrittenSince, by: str, comment: str = "") -> None:
        self.decision = decision
        self.written = written
        self.by = by
        self.comment = comment
        super().__init__(f"{decision} ({by}): {written.describe()}")


def restore_allowed(config: EnvironmentConfig, tag: str, *, automatic: bool, allow_data_loss: bool,
                    before_any_change: bool = False) -> WrittenSince:
    """Returns when the backup may be restored (nothing would be lost, or that was allowed or decided);
    raises NotRestored, or for a rollback by hand RollbackFailed (InvalidInput when asked `before_any_change`,
    as a rollback by hand asks before it turns maintenance on)."""
    written = measure_writes_since_backup(config, tag)
    logger = get_run_logger()
    if not written.loses_data:
        return written
    if allow_data_loss:
        logger.warning("Restoring anyway, as allow_data_loss was given: %s.", written.describe())
        return written
    if not automatic and before_any_change:
        raise InvalidInput("restore backup", written.describe(),
                           f"nothing was changed. Run rollback/{config.name} again with allow_data_loss = true to "
                           "discard it, or undo the schema by hand")
    if not automatic:
        raise RollbackFailed("restore backup", written.describe(),
                             f"nothing was restored; maintenance is still on. Run rollback/{config.name} again with "
                             "allow_data_loss = true to discard it, or undo the schema by hand")
    run = current_run.id or "<run id>"
    notify(config, f"ALERT: rollback of {config.name} waits for a decision",
           f"{written.describe()}.\nMaintenance stays on; nothing was restored. Decide in the UI (Resume) or run: "
           f"deployctl decide {run} --as NAME --restore | --downgrade-by-hand | --keep-release", alert=True)
    form = DataLossDecision.with_initial_data(description=_form_text(config, written))
    try:
        answer = pause_flow_run(wait_for_input=form, timeout=config.rollback.decision_timeout_seconds,
                                poll_interval=1, key="data-loss-decision")
    except FlowPauseTimeout:
        raise NotRestored("downgrade-by-hand", written, "nobody",
                          f"no decision within {config.rollback.decision_timeout_seconds} s") from None
    logger.warning("Decision by %s: %s%s.", answer.decided_by, answer.decision,
                   f" ({answer.comment})" if answer.comment else "")
    if answer.decision == "restore":
        return written
    raise NotRestored(answer.decision, written, answer.decided_by, answer.comment)


def _form_text(config: EnvironmentConfig, written: WrittenSince) -> str:
    lines = [f"### Rollback of {config.name}: restoring the backup would lose data",
             f"**{written.describe()}.**" if not written.unknown else f"**{written.describe()}**",
             "Maintenance is on and nothing was restored. The database is as the failed release left it, with "
             "everything written since.",
             "- **restore**: discard what is listed and go on with the rollback (code and database back).",
             "- **downgrade-by-hand**: stop here; maintenance stays on while you undo the schema yourself.",
             "- **keep-release**: resume traffic on the failed release as it is; nothing is undone."]
    return "\n\n".join(lines)
