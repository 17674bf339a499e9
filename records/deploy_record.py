"""The record of one deploy run: its ledger row, phase timings, progress, notifications and summary.

The deploy flow reads as the runbook; everything it must write down as it goes lives here. A phase is
a `with record.phase(name):` block, timed into the ledger and announced when it ends; `finish` and a
failure (`recorded`) each leave one outcome in the ledger, one notification and one published summary.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from prefect.logging import get_run_logger
from prefect.runtime import flow_run as current_run

from deployments.config import EnvironmentConfig
from deployments.errors import DeployError
from records.ledger import Ledger, Release
from records.metrics import publish_metrics
from records.notifications import impact, notify
from records.reporting import Progress, publish, success_criteria, summary_text
from tasks.steps import recording


class DeployRecord:
    """Opens the deploy's ledger row on creation; `recorded()` wraps the run so every step and a failure
    are written down; `phase()` times each phase; `finish()` closes the row on any other outcome."""

    def __init__(self, config: EnvironmentConfig, *, ref: str, dry_run: bool, reason: str) -> None:
        self.config = config
        self.logger = get_run_logger()
        self.ledger = Ledger.for_state_dir(config.state_dir)
        self.run_id = str(current_run.id) if current_run.id else None
        self.release_id = self.ledger.open_release(
            environment=config.name, flow_run_id=self.run_id, flow_run_name=current_run.name, ref=ref,
            reason=reason, dry_run=dry_run).id
        # The name the migrations and the canary give the app's database sessions, so a crash finds them.
        self.app_name = f"deploy-{(self.run_id or str(self.release_id))[:8]}"
        self.progress = Progress(config.name)
        self.timings: dict[str, float] = {}
        self.notified = False
        self.say(f"Deploy to {config.name} starting", f"ref {ref}; reason: {reason or '—'}"
                 + ("; dry run, nothing will change" if dry_run else ""))

    @property
    def release(self) -> Release:
        return self.ledger.get(self.release_id)

    @contextmanager
    def recorded(self, cleanup: Callable[[], None] | None = None) -> Iterator[None]:
        """Every step into the ledger; a DeployError ends the row as failed or aborted, and is re-raised.
        `cleanup` (a callable) runs however the block ends."""
        try:
            with recording(self.ledger, self.release_id):
                yield
        except DeployError as exc:
            self._failed(exc)
            raise
        finally:
            if cleanup is not None:
                cleanup()

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
        self.say(f"Deploy to {self.config.name}: {name} done", f"in {self.timings[name]:.1f} s")

    def update(self, **fields: Any) -> None:
        self.ledger.update(self.release_id, **fields)

    def finish(self, outcome: str, message: str, watch: Callable[[], str] | None = None) -> str:
        """Close the row with `outcome`. A success then starts its watch (`watch`, which says how in one
        line) and is announced with its summary and that line."""
        self.logger.info(message)
        self.ledger.finish(self.release_id, outcome)
        if outcome == "succeeded":
            watching = watch() if watch is not None else "not scheduled"
            release = self.release
            criteria = success_criteria(release, self.ledger.steps(self.release_id), notified=True)
            self.notified = self.say(f"Deploy to {self.config.name} succeeded: {message}",
                                     summary_text(release, criteria) + f"\nWatch: {watching}")
        else:
            self.say(f"Deploy to {self.config.name}: {outcome}", message)
        self._publish()
        return message

    def say(self, subject: str, body: str, alert: bool = False) -> bool:
        return notify(self.config, subject, body, alert=alert)

    def _failed(self, exc: DeployError) -> None:
        release = self.release
        touched = getattr(exc, "changed_production", False)  # a step meant for a copy changed production
        changed = release.code_changed or release.migration_started or touched
        outcome = "failed" if changed else "aborted"
        self.ledger.finish(self.release_id, outcome, step=exc.step, error=str(exc))
        if touched:
            state, next_step = ("CHANGED: the live database is not as the deploy found it; the code is unchanged",
                                "no automatic rollback: nothing this deploy recorded says how to undo it; "
                                "check the database and restore its last backup by hand if needed")
        elif not changed:
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
        self.say(f"Deploy to {self.config.name} {outcome} at {exc.step}", f"{exc}\n{impact(exc.step, state, next_step)}",
                 alert=changed)
        self._publish()

    def _publish(self) -> None:
        self.logger.info("Metrics: %s.", publish_metrics(self.config, self.ledger))
        release = self.release
        publish(self.config, self.ledger, self.release_id,
                success_criteria(release, self.ledger.steps(self.release_id), self.notified))
