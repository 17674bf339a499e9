"""What a deploy shows in the Prefect UI: a progress artifact while it runs, then a markdown summary
and a table of every check, under stable keys per environment so the Artifacts page keeps a history.

Everything written here passes through `redact`: an artifact is as public as a log line.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from uuid import UUID

from prefect.artifacts import create_markdown_artifact, create_progress_artifact, create_table_artifact, update_progress_artifact

from deployments.secrets import redact
from tasks.ledger import Ledger, Release, StepRecord

PHASES = ("verify-prerequisites", "approvals", "pre-deployment-verification", "deployment-execution",
          "post-deployment-verification")


@dataclass(frozen=True)
class Criterion:
    name: str
    met: bool
    evidence: str


class Progress:
    """A progress artifact that moves one notch per phase."""

    def __init__(self, environment: str) -> None:
        self.artifact_id: UUID | None = None
        try:
            self.artifact_id = create_progress_artifact(
                0.0, key=f"deploy-{environment}-progress", description=f"Deploy to {environment}: phases done")
        except RuntimeError:
            self.artifact_id = None  # outside a flow run (unit tests call steps directly)

    def phase_done(self, phase: str) -> None:
        if self.artifact_id is not None and phase in PHASES:
            update_progress_artifact(self.artifact_id, 100.0 * (PHASES.index(phase) + 1) / len(PHASES))


def success_criteria(release: Release, steps: list[StepRecord], notified: bool) -> list[Criterion]:
    """The runbook's success criteria, each with the evidence the ledger holds."""
    done = {s.name: s for s in steps if s.status == "completed"}

    def evidence(name: str) -> str:
        return done[name].detail if name in done else "not done"

    return [
        Criterion("Application health checks passing", "check-health" in done, evidence("check-health")),
        Criterion("Database migrations completed successfully", "run-migrations" in done,
                  evidence("run-migrations")),
        Criterion("Critical functionality verified", "run-critical-path-tests" in done,
                  evidence("run-critical-path-tests")),
        Criterion("No critical errors in application logs", "watch-startup-logs" in done,
                  evidence("watch-startup-logs")),
        Criterion("Monitoring systems showing normal metrics", "check-performance" in done,
                  evidence("check-performance")),
        Criterion("Stakeholders notified of successful deployment", notified,
                  "completion notification sent" if notified else "not sent"),
    ]


def summary_text(release: Release, criteria: list[Criterion]) -> str:
    """The deployment summary of the completion notification: plain text, any channel renders it."""
    def short(sha: str | None) -> str:
        return sha[:12] if sha else "—"

    lines = [
        f"Release: {release.ref} {short(release.target_sha)} (was {short(release.previous_sha)})",
        f"Reason: {release.reason or '—'}",
        f"Database: {release.db_revision_before or '—'} -> {release.db_revision_after or release.db_revision_before or '—'}",
        f"Backup: {release.backup_tag or 'none taken'}",
        "Approvals: " + (", ".join(f"{a['approver']} ({a['role']})" for a in release.approvals) or "not required"),
        "Timings: " + ", ".join(f"{phase} {seconds:.0f} s" for phase, seconds in release.timings.items()),
        "Checks:",
    ]
    lines += [f"  {'ok' if c.met else 'NOT MET'}  {c.name}" for c in criteria
              if not c.name.startswith("Stakeholders")]
    return redact("\n".join(lines))


def summary_markdown(release: Release, steps: list[StepRecord], criteria: list[Criterion]) -> str:
    def short(sha: str | None) -> str:
        return f"`{sha[:12]}`" if sha else "—"

    lines = [
        f"# Deploy to {release.environment}: **{release.outcome}**",
        "",
        f"Ref `{release.ref}` → {short(release.target_sha)}" + (" (dry run: nothing changed)" if release.dry_run else ""),
        f"Reason: {release.reason or '—'}",
        "",
        "| | before | after |",
        "|---|---|---|",
        f"| code | {short(release.previous_sha)} | {short(release.target_sha if release.outcome == 'succeeded' else release.previous_sha)} |",
        f"| database revision | `{release.db_revision_before or '—'}` | `{release.db_revision_after or release.db_revision_before or '—'}` |",
        "",
        f"Backup: `{release.backup_tag or 'none taken'}`",
        "",
        "## Approvals",
    ]
    lines += [f"- **{a['approver']}** ({a['role']}) {a['decision']}d at {a['at']}"
              + (f": {a['comment']}" if a.get("comment") else "") for a in release.approvals] or ["- not required"]
    if release.error:
        lines += ["", "## What went wrong", f"Step `{release.failed_step}`: {release.error}"]
    lines += ["", "## Timings", "| phase | seconds |", "|---|---|"]
    lines += [f"| {phase} | {seconds:.1f} |" for phase, seconds in release.timings.items()]
    lines += ["", "## Success criteria", "| criterion | met | evidence |", "|---|---|---|"]
    lines += [f"| {c.name} | {'✅' if c.met else '❌'} | {c.evidence[:200]} |" for c in criteria]
    lines += ["", "## Steps", "| step | status | seconds | detail |", "|---|---|---|---|"]
    lines += [f"| {s.name} | {s.status} | {s.seconds if s.seconds is not None else '—'} | {s.detail[:200]} |"
              for s in steps]
    return redact("\n".join(lines))


def publish(ledger: Ledger, release_id: int, criteria: list[Criterion]) -> None:
    release = ledger.get(release_id)
    steps = ledger.steps(release_id)
    markdown = summary_markdown(release, steps, criteria)
    rows: list[dict[str, Any]] = [
        {"step": s.name, "status": s.status, "seconds": s.seconds, "detail": redact(s.detail[:300])} for s in steps
    ]
    env = release.environment
    create_markdown_artifact(markdown, key=f"deploy-{env}-summary", description=f"Deploy to {env}: {release.outcome}")
    create_table_artifact(rows, key=f"deploy-{env}-checks", description=f"Every check of the deploy to {env}")
