"""What a deploy shows in the Prefect UI: a run name that says what it deploys, a progress artifact
while it runs, then a markdown summary and a table of every check, under stable keys per environment
(`deploy-<env>-summary`, `deploy-<env>-checks`, `rollback-<env>-summary`) so the Artifacts page keeps
a history. After every deploy and rollback the form of `rollback/<env>` (Run → Custom run) is set to
the release a rollback by hand would return to.

Everything written here passes through `redact`: an artifact is as public as a log line. Tables get
short details (the checks table has the long ones): a wide cell pushes the other columns off screen.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from prefect.artifacts import create_markdown_artifact, create_progress_artifact, create_table_artifact, update_progress_artifact
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import DeploymentUpdate
from prefect.exceptions import ObjectNotFound

from deployments.config import EnvironmentConfig
from deployments.errors import DeployError
from deployments.secrets import redact
from records.ledger import Ledger, Release, StepRecord
from tasks.source import Commit, commits_between

# Characters of a step's detail in a summary table: its cells do not wrap, and a wider one pushes
# the rest of the table off screen. The checks table and the ledger keep the whole detail.
DETAIL = 56
PHASES = ("verify-prerequisites", "approvals", "pre-deployment-verification", "deployment-execution",
          "post-deployment-verification")


@dataclass(frozen=True)
class Criterion:
    name: str
    met: bool | None  # None: not measured or not checked (nothing to do it with), which is not a pass
    evidence: str

    @property
    def unknown(self) -> str:
        """How a criterion that is neither met nor failed is said: its evidence's first words."""
        return "not checked" if self.evidence.startswith("not checked") else "not measured"


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
        Criterion("Critical functionality verified",
                  None if evidence("run-critical-path-tests").startswith("not checked") else "run-critical-path-tests" in done,
                  evidence("run-critical-path-tests")),
        logs_watched(steps),
        Criterion("Monitoring systems showing normal metrics",
                  None if evidence("check-performance").startswith("not measured") else "check-performance" in done,
                  evidence("check-performance")),
        Criterion("Stakeholders notified of successful deployment", notified,
                  "completion notification sent" if notified else "not sent"),
    ]


def logs_watched(steps: list[StepRecord]) -> Criterion:
    """One host's startup log watched clean; a fleet's, every host's (its last watch counts: a host rolled
    back and forth is judged on where it ended)."""
    name = "No critical errors in application logs"
    last = {s.name: s for s in steps if s.name == "watch-startup-logs" or s.name.startswith("watch-startup-logs [")}
    if set(last) <= {"watch-startup-logs"}:
        step = last.get("watch-startup-logs")
        return Criterion(name, step is not None and step.status == "completed",
                         step.detail if step is not None and step.status == "completed" else "not done")
    hosts = {s.name.removeprefix("watch-startup-logs [").rstrip("]"): s for s in last.values() if s.name != "watch-startup-logs"}
    bad = sorted(host for host, step in hosts.items() if step.status != "completed")
    return Criterion(name, not bad, f"{len(hosts) - len(bad)} of {len(hosts)} hosts' logs clean"
                     + (f"; not on {', '.join(bad)}" if bad else f" ({', '.join(sorted(hosts))})"))


def summary_text(release: Release, criteria: list[Criterion]) -> str:
    """The deployment summary of the completion notification: plain text, any channel renders it."""
    def short(sha: str | None) -> str:
        return sha[:12] if sha else "—"

    lines = [
        f"Release: {release.ref} {short(release.target_sha)} (was {short(release.previous_sha)})",
        f"Reason: {release.reason or '—'}",
        f"Database: {release.db_revision_before or '—'} -> {release.db_revision_after or release.db_revision_before or '—'}",
        f"Backup: {release.backup_tag or 'none taken'}",
        *([f"Python environment: {release.environment_before or '—'} -> {release.environment_after}"]
          if release.environment_after else []),
        "Approvals: " + (", ".join(f"{a['approver']} ({a['role']})" for a in release.approvals) or "not required"),
        "Timings: " + ", ".join(f"{phase} {seconds:.0f} s" for phase, seconds in release.timings.items()),
        "Checks:",
    ]
    lines += [f"  {_met(c.met, 'ok', 'NOT MET', c.unknown.upper())}  {c.name}" for c in criteria
              if not c.name.startswith("Stakeholders")]
    return redact("\n".join(lines))


def summary_markdown(release: Release, steps: list[StepRecord], criteria: list[Criterion],
                     commits: list[Commit] | None = None, required_roles: list[str] | None = None) -> str:
    """`commits`: what the release brings (None: unknown); `required_roles`: the approvals the
    environment asks for (None: unknown)."""
    lines = [
        f"# Deploy to {release.environment}: **{release.outcome}**",
        "",
        f"{_release(release)}" + (" (dry run: nothing changed)" if release.dry_run else "")
        + f" · reason: {_cell(release.reason) or '—'} · run {_cell(release.flow_run_name or '—')}",
        "",
        "| | before | after |",
        "|---|---|---|",
        f"| code | {_short(release.previous_sha)} | {_short(release.target_sha if release.outcome == 'succeeded' else release.previous_sha)} |",
        f"| database revision | `{release.db_revision_before or '—'}` | `{release.db_revision_after or release.db_revision_before or '—'}` |",
        f"| backup | | {_backup(release)} |",
        *([f"| Python environment | `{release.environment_before or '—'}` | "
           f"`{release.environment_after if release.outcome == 'succeeded' else release.environment_before or '—'}` |"]
          if release.environment_after else []),
        "",
        "## What changed" if release.outcome == "succeeded" else "## What the release would have changed",
        *_what_changed(release, commits),
        "",
        "## Approvals",
    ]
    lines += [f"- **{_cell(a['approver'])}** ({a['role']}) {a['decision']}d at {_when(a['at'])}"
              + (f": {_cell(a['comment'])}" if a.get("comment") else "") for a in release.approvals]
    if not release.approvals and required_roles == []:
        lines.append("- not required")
    elif not release.approvals and release.failed_step == "approve deployment":
        lines.append("- refused, or not given in time: see What went wrong")
    elif not release.approvals:
        lines.append("- none given")
    if release.error:
        error = release.error.removeprefix(f"{release.failed_step}: ")
        lines += ["", "## What went wrong", f"**{release.failed_step}**: {_cell(error)}"]
    lines += ["", "## Timings", "| phase | time |", "|---|---|"]
    lines += [f"| {phase} | {_duration(seconds)} |" for phase, seconds in release.timings.items()]
    if release.timings:
        lines += [f"| **total** | **{_duration(sum(release.timings.values()))}** |"]
    if release.outcome in ("aborted", "noop"):
        lines += ["", "## Success criteria", "- not evaluated: nothing was deployed"]
    else:
        lines += ["", "## Success criteria", "| criterion | met | evidence |", "|---|---|---|"]
        lines += [f"| {c.name} | {_met(c.met, 'yes', '**NO**', f'**{c.unknown}**')} | {_cell(c.evidence, DETAIL)} |"
                  for c in criteria]
    lines += ["", f"## Every check ({len(steps)})", "| step | status | seconds | detail |", "|---|---|---|---|"]
    lines += [f"| {s.name} | {s.status} | {_seconds(s.seconds)} | {_cell(s.detail, DETAIL)} |" for s in steps]
    return redact("\n".join(lines))


def publish(config: EnvironmentConfig, ledger: Ledger, release_id: int, criteria: list[Criterion]) -> None:
    release = ledger.get(release_id)
    steps = ledger.steps(release_id)
    required = list(config.approvals.required_roles)
    markdown = summary_markdown(release, steps, criteria, _commits(config, release), required)
    rows: list[dict[str, Any]] = [
        {"step": s.name, "status": s.status, "seconds": s.seconds, "detail": redact(s.detail[:300])} for s in steps
    ]
    env = release.environment
    what = f"{env}: {_release(release, markdown=False)}"
    failed = sum(s.status == "failed" for s in steps)
    create_markdown_artifact(markdown, key=f"deploy-{env}-summary", description=redact(f"{what} {_outcome(release)}"))
    create_table_artifact(rows, key=f"deploy-{env}-checks", description=redact(
        f"{what}: {len(steps)} checks, {len(steps) - failed} passed" + (f", {failed} failed" if failed else "")))
    offer_rollback_target(ledger, env)


def publish_rollback(ledger: Ledger, record_id: int, outcome: str, message: str) -> None:
    """The summary of a rollback run, under `rollback-<env>-summary`: what was undone, how, every step."""
    record = ledger.get(record_id)
    subject = ledger.get(record.rollback_of) if record.rollback_of else None
    env = record.environment
    undone = f"{_release(subject)}, deployed by run {_cell(subject.flow_run_name or '—')}" if subject else "—"
    steps = ledger.steps(record_id)
    lines = [
        f"# Rollback of {env}: **{outcome.replace('_', ' ')}**", "", _cell(message), "",
        f"Undoes: {undone} · reason: {_cell(record.reason) or '—'}", "",
        "| | before | after |", "|---|---|---|",
        f"| code | {_short(record.previous_sha)} | {_short(record.target_sha if outcome == 'rolled_back' else None)} |",
        f"| database revision | `{(subject.db_revision_after if subject else None) or '—'}` | "
        f"`{(record.db_revision_before if outcome == 'rolled_back' else None) or '—'}` |",
    ]
    if subject is not None and subject.backup_tag:
        lines += ["", f"The release's backup, kept: {_backup(subject)}"]
    lines += ["", f"## Every step ({len(steps)})", "| step | status | seconds | detail |", "|---|---|---|---|"]
    lines += [f"| {s.name} | {s.status} | {_seconds(s.seconds)} | {_cell(s.detail, DETAIL)} |" for s in steps]
    description = f"{env}: {outcome.replace('_', ' ')}" + (f", undid {_release(subject, markdown=False)}"
                                                            if subject else "")
    create_markdown_artifact(redact("\n".join(lines)), key=f"rollback-{env}-summary", description=redact(description))
    offer_rollback_target(ledger, env)


def offer_rollback_target(ledger: Ledger, environment: str) -> str | None:
    """Point the form of `rollback/<environment>` at the release a rollback by hand returns to: the one
    live before the last good release. Returns the short SHA offered; None when there is none (the
    field is then left empty, and a rollback says there is nothing to roll back) or no such deployment.

    The automatic rollbacks pass `failed_run_id`, which makes the flow ignore `to`. `make deploy`
    re-registers the deployment without it until the next deploy or rollback ends."""
    live = ledger.last_succeeded(environment)
    target = live.previous_sha[:12] if live is not None and live.previous_sha else None
    with get_client(sync_client=True) as client:
        try:
            deployment = client.read_deployment_by_name(f"rollback/{environment}")
        except ObjectNotFound:
            return None
        parameters = {name: value for name, value in deployment.parameters.items() if name != "to"}
        if target is not None:
            parameters["to"] = target
        if parameters != deployment.parameters:
            client.update_deployment(deployment.id, DeploymentUpdate(parameters=parameters))
    return target


def rename_run(run_id: str | None, name: str) -> str:
    """Rename the flow run (Prefect names it once, from the parameters, before the SHA is known)."""
    if run_id is not None:
        with get_client(sync_client=True) as client:
            client.update_flow_run(UUID(run_id), name=name)
    return name


def _commits(config: EnvironmentConfig, release: Release) -> list[Commit] | None:
    """What the release brings, from the environment's workspace; None when that cannot be read."""
    if not (release.previous_sha and release.target_sha):
        return None
    try:
        return commits_between(config, release.previous_sha, release.target_sha)
    except DeployError:
        return None


def _what_changed(release: Release, commits: list[Commit] | None) -> list[str]:
    if commits is None:
        lines = ["- commits: not known (the release was never resolved, or the workspace cannot be read)"]
    elif commits:
        lines = [f"- `{c.sha[:12]}` {_cell(c.subject, 90)} ({_cell(c.author)})" for c in commits[:20]]
        lines += [f"- and {len(commits) - 20} more commits"] if len(commits) > 20 else []
    else:
        lines = ["- no new commit"]
    migrations = release.migrations or []
    lines += [f"- migration `{m['revision']}`: {_cell(str(m.get('message', '')), 90)}"
              + (f" ({'; '.join([m['kind'], *m.get('findings', [])])})" if m.get("kind") else "") for m in migrations]
    if not migrations and release.db_revision_before:
        lines += ["- no migration"]
    return lines


def _release(release: Release, markdown: bool = True) -> str:
    sha = (release.target_sha or "")[:12]
    if not markdown:
        return f"{release.ref} ({sha})" if sha and not sha.startswith(release.ref) else release.ref
    shown = f"**{_cell(release.ref)}** `{sha}`" if sha and not sha.startswith(release.ref) else f"`{sha or release.ref}`"
    return shown + (f" over {_short(release.previous_sha)}" if release.previous_sha else "")


def _outcome(release: Release) -> str:
    if release.outcome == "succeeded":
        names = ", ".join(a["approver"] for a in release.approvals)
        return "succeeded" + (f", approved by {names}" if names else "")
    if release.error:
        return f"{release.outcome}: {_line(release.error.removeprefix(f'{release.failed_step}: '), 160)}"
    return release.outcome + (" (dry run)" if release.dry_run else "")


def _backup(release: Release) -> str:
    if not release.backup_tag:
        return "none taken"
    manifest = release.backup_manifest or {}
    rows = sum((manifest.get("row_counts") or {}).values())
    return f"`{release.backup_tag}`" + (f" ({manifest.get('kind')}, {rows} rows, verified)" if manifest else "")


def _met(met: bool | None, yes: str, no: str, unknown: str) -> str:
    return unknown if met is None else yes if met else no


def _short(sha: str | None) -> str:
    return f"`{sha[:12]}`" if sha else "—"


def _cell(text: str, limit: int = 300) -> str:
    """`text` on one line of a markdown table: newlines folded, clipped, pipes escaped."""
    return _line(text, limit).replace("|", "\\|")


def _line(text: str, limit: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _seconds(seconds: float | None) -> str:
    return "—" if seconds is None else f"{seconds:.2f}"


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest} s" if minutes < 60 else f"{minutes // 60} h {minutes % 60} min"


def _when(iso: str) -> str:
    try:
        return datetime.fromisoformat(iso).strftime("%Y-%m-%d %H:%M:%S UTC")
    except ValueError:
        return iso
