"""Production deployment approval: the team lead and the product owner, two different people.

The run pauses with a typed form (the Resume button in the UI, or `deployctl approve`). Open-source
Prefect has no user identity, so the approver's name is a required, self-declared field; it is
recorded in the ledger and the summary. One answer per pause: the run pauses again until every
required role has approved, and ends at the first rejection or when the time is up.

The form opens with the brief (`ReleaseBrief`): what is being approved, before any log is read:
the release and what it replaces, the commits and migrations it brings, the checks already passed,
staging's state, the backup about to be taken and what happens if the deploy fails. The Resume
dialog gives the brief only the height the fields leave, so the headline and the approvals still
needed come first and every field description fits on one line.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from prefect.exceptions import FlowPauseTimeout
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput
from prefect.logging import get_run_logger
from prefect.runtime import flow_run as current_run
from pydantic import Field, field_validator
from sqlalchemy.engine import make_url

from deployments.config import EnvironmentConfig
from deployments.errors import ApprovalRejected, DeployError
from deployments.secrets import redact, resolve_database_url
from tasks.backups import Manifest, latest_manifest
from tasks.health import assess
from records.ledger import StepRecord
from tasks.migration_lint import MEANING, LintReport
from tasks.migrations import MigrationStatus, PendingRevision, Rehearsal
from tasks.source import Commit, ResolvedRelease, commits_between


class ApprovalDecision(RunInput):
    """Your decision on this production deployment."""

    # One line each in the Resume dialog: every line they take is taken from the brief above them.
    approver: str = Field(min_length=2, max_length=80,
                          description="Your full name, as the ledger and the summary record it.")
    role: Literal["team-lead", "product-owner"] = Field(
        description="The role you answer as; two different people must approve.")
    decision: Literal["approve", "reject"] = Field(
        description="approve: the deploy goes on. reject: it stops, nothing changed.")
    comment: str = Field("", max_length=500, description="Why. With reject: the reason everyone reads.")

    @field_validator("approver")
    @classmethod
    def _name(cls, value: str) -> str:
        return full_name(value)


def full_name(value: str) -> str:
    """A person's name as typed into a form, on one line; refused when there is none."""
    value = " ".join(value.split())
    if len(value) < 2:
        raise ValueError("give your name")
    return value


@dataclass(frozen=True)
class Approval:
    approver: str
    role: str
    decision: str
    comment: str
    at: str

    def as_dict(self) -> dict[str, Any]:
        return {"approver": self.approver, "role": self.role, "decision": self.decision,
                "comment": self.comment, "at": self.at}


def problem_with(answer: ApprovalDecision, given: list[Approval], required: list[str]) -> str | None:
    """Why this answer cannot count, or None when it does."""
    if answer.decision == "reject":
        return None
    if answer.role not in required:
        return f"role {answer.role} is not asked for here"
    if any(a.role == answer.role for a in given):
        return f"{answer.role} has already approved"
    if any(a.approver.casefold() == answer.approver.casefold() for a in given):
        return f"{answer.approver} has already approved as another role; a second person must approve"
    return None


# How often a paused deploy asks the server whether it was resumed. Prefect's pause sleeps this long
# before its first look, so it is also what an approval answered at once costs: one light read a
# second of one run is nothing to a server, and an approval lands within a second.
APPROVAL_POLL_SECONDS = 1


def obtain_approvals(config: EnvironmentConfig, brief: str) -> list[Approval]:
    """Pause until every required role approved; ApprovalRejected on a rejection or the timeout.
    `brief` (markdown, `ReleaseBrief.markdown`) opens every form."""
    required = list(config.approvals.required_roles)
    logger = get_run_logger()
    given: list[Approval] = []
    deadline = time.monotonic() + config.approvals.timeout_seconds
    attempt = 0
    while len(given) < len(required):
        remaining = int(deadline - time.monotonic())
        waiting = [r for r in required if r not in {a.role for a in given}]
        if remaining <= 0:
            break
        attempt += 1
        logger.info("Waiting for approval from %s (%d s left). Resume the run in the UI or run: "
                    "deployctl approve %s --as NAME --role %s", " and ".join(waiting), remaining,
                    current_run.id or "<run id>", waiting[0])
        form = ApprovalDecision.with_initial_data(description=form_description(brief, given, waiting))
        try:
            answer = pause_flow_run(wait_for_input=form, timeout=remaining, poll_interval=APPROVAL_POLL_SECONDS,
                                    key=f"approval-{attempt}")
        except FlowPauseTimeout:
            break
        problem = problem_with(answer, given, required)
        if problem is not None:
            logger.warning("Approval not counted: %s.", problem)
            continue
        approval = Approval(answer.approver, answer.role, answer.decision, answer.comment,
                            datetime.now(timezone.utc).isoformat(timespec="seconds"))
        if answer.decision == "reject":
            raise ApprovalRejected("approve deployment", f"{answer.approver} ({answer.role}) rejected it"
                                   + (f": {answer.comment}" if answer.comment else ""),
                                   "nothing was changed; deploy again once the concern is addressed")
        logger.info("Approved by %s as %s.", approval.approver, approval.role)
        given.append(approval)
    if len(given) < len(required):
        missing = [r for r in required if r not in {a.role for a in given}]
        raise ApprovalRejected("approve deployment", f"no approval from {', '.join(missing)} within "
                               f"{config.approvals.timeout_seconds} s", "nothing was changed; deploy again when "
                               "the approvers are available, or raise approvals.timeout_seconds")
    return given


def form_description(brief: str, given: list[Approval], waiting: list[str]) -> str:
    """The brief with the approvals still needed right under its headline (its first paragraph)."""
    headline, _, rest = brief.partition("\n\n")
    done = ", ".join(f"{_md(a.approver)} ({a.role})" for a in given) or "nobody yet"
    status = f"**Waiting for: {' and '.join(waiting)}.** Approved so far: {done}."
    return "\n\n".join(part for part in (headline, status, rest) if part)


# Prerequisites whose evidence the brief gives elsewhere: the headline, What changes, Staging.
RESTATED = frozenset({"fetch-release", "resolve-release", "check-migrations", "lint-migrations", "verify-staging"})


@dataclass(frozen=True)
class ReleaseBrief:
    """What an approver approves, as the Resume form shows it above the fields."""

    environment: str
    release: ResolvedRelease
    reason: str
    commits: list[Commit] | None  # what the release brings, newest first; None: git could not say
    dropped: list[Commit]  # what the live release has and this one does not (a deploy back in time)
    migrations: list[PendingRevision]
    revision: str | None  # of the live database
    database: str  # its kind: sqlite, postgresql
    backup_directory: Path
    checks: list[StepRecord]  # the prerequisites, with their evidence
    staging: str  # staging's state, as checked when the brief was written
    automatic_rollback: bool
    last_backup: Manifest | None = None  # the newest published backup: how long a restore takes
    lint: LintReport | None = None  # each pending revision's kind and squawk's findings
    rehearsal: Rehearsal | None = None  # each pending revision measured on a copy

    def markdown(self) -> str:
        release, env = self.release, self.environment
        blocks = [
            f"### Deploy `{release.ref}` to {env}\n"
            f"`{release.short}` {_md(release.subject)}, replacing `{release.live_sha[:12]}`"
            + (f". Reason: {_md(self.reason)}" if self.reason else ""),
            "**What changes**",
            self._migrations(),
            self._commits(),
            self._checks(),
            f"**Staging**: {self.staging}",
            self._backup(),
            f"**If it fails**: {self._rollback_plan()}",
        ]
        return redact("\n\n".join(blocks))

    def _backup(self) -> str:
        proof = ("proven by restoring it into a scratch database that must hold the same revision, schema and "
                 "row counts" if self.database == "postgresql" else
                 "checked page by page and compared with the database (revision, schema, row counts)")
        line = (f"**Backup first**: the {self.environment} database ({self.database}, revision "
                f"`{self.revision or 'none'}`) is copied to {_md(str(self.backup_directory))} as "
                f"`pre-deployment-<date>-<time>` and {proof}, before anything changes.")
        last = self.last_backup
        if last is not None and "restore" in last.seconds:
            line += (f" The last backup (`{last.tag}`, {sum(last.row_counts.values())} rows) took "
                     f"{last.seconds['restore']:.1f} s to restore into a scratch copy.")
        elif last is not None and "dump" in last.seconds:  # SQLite: a restore copies the file back, as the backup did
            line += (f" The last backup (`{last.tag}`, {sum(last.row_counts.values())} rows) was copied in "
                     f"{last.seconds['dump']:.1f} s and checked in {last.seconds.get('verify', 0.0):.1f} s; "
                     "a restore copies it back the same way.")
        copied = self.rehearsal.copy_seconds if self.rehearsal is not None else None
        if copied is not None:
            how = "dumped and restored into a scratch database" if self.database == "postgresql" else "copied"
            line += (f" **Worst case**, a restore: the database as it is now was {how} for the rehearsal in "
                     f"{copied:.1f} s.")
        return line

    def _commits(self) -> str:
        shown = 8
        if self.commits is None:
            return "The commits since the live release could not be listed (see the run's log)."
        if self.commits:
            lines = [f"{_count(self.commits, 'commit')} since the live release:"]
            lines += [f"- `{c.sha[:12]}` {_md(_clip(c.subject, 90))} ({_md(c.author)})" for c in self.commits[:shown]]
            lines += [f"- and {len(self.commits) - shown} more"] if len(self.commits) > shown else []
            return "\n".join(lines)
        if self.dropped:
            newest = self.dropped[0]
            return (f"Goes **back** {_count(self.dropped, 'commit')}: the live release has them and this one does "
                    f"not (newest: `{newest.sha[:12]}` {_md(_clip(newest.subject, 80))}).")
        return "No new commit: the live code is deployed again."

    def _migrations(self) -> str:
        if not self.migrations:
            return f"No migration: the database stays at `{self.revision or 'base'}`."
        lines = [f"{_count(self.migrations, 'migration')} to run, from revision `{self.revision or 'base'}`"
                 + (f" (linted by {_md(self.lint.linter)}):" if self.lint is not None else ":")]
        for m in self.migrations:
            lines.append(f"- `{m.revision}` {_md(_clip(m.message, 80))}: {self._kind(m)}; rollback: "
                         + ("downgrade" if m.has_downgrade else "**restore the backup** (no downgrade)"))
            lines += [f"  - {line}" for line in self._evidence(m.revision)]
        return "\n".join(lines)

    def _kind(self, migration: PendingRevision) -> str:
        lint = self.lint.of(migration.revision) if self.lint is not None else None
        if lint is None:
            return "kind not read"
        what = f" ({_md('; '.join(lint.why))})" if lint.why else ""
        if lint.kind == "expand":
            return f"expand{what}"
        return f"**{lint.kind}**{what}: {MEANING[lint.kind]}"

    def _evidence(self, revision: str) -> list[str]:
        """What was measured on the copy, and the linter's findings, for one revision."""
        lines = []
        measure = self.rehearsal.of(revision) if self.rehearsal is not None else None
        if measure is not None:
            held = measure.lock.describe() if measure.lock is not None else "no lock on an existing table seen"
            rewrote = f", **rewrote** {_md(', '.join(measure.rewrote))}" if measure.rewrote else ""
            lines.append(f"on a copy of {self.environment}: {_md(held)}{rewrote}, {measure.seconds:.2f} s in all")
        lint = self.lint.of(revision) if self.lint is not None else None
        if lint is not None and not lint.rendered:
            lines.append(f"not linted: {_md(lint.note)}")
        for finding in lint.findings if lint is not None else []:
            verdict = {"blocks": "**blocks**", "warns": "warns", "allowed": "allowed"}[finding.verdict]
            why = f" ({_md(finding.reason)})" if finding.reason else ""
            lines.append(f"{finding.rule} {verdict}{why}: `{_clip(finding.statement, 70).replace('`', '')}`")
        return lines

    def _checks(self) -> str:
        shown = [c for c in self.checks if c.name not in RESTATED]
        lines = [f"**Checks passed**: {_count(self.checks, 'prerequisite')} (the verify-prerequisites subflow), "
                 "among them:"]
        # The pending migrations that details end with are listed under What changes.
        lines += [f"- {c.name}: **skipped** ({_md(c.detail.removesuffix(': skipped'))})" if "skipped" in c.detail
                  else f"- {c.name}: {_md(_clip(c.detail.partition(': Pending: ')[0], 80))}" for c in shown]
        return "\n".join(lines)

    def _rollback_plan(self) -> str:
        start = (f"rolled back automatically (rollback/{self.environment})" if self.automatic_rollback
                 else f"rollback.automatic is off: run rollback/{self.environment} by hand")
        code = f"code back to `{self.release.live_sha[:12]}`"
        if not self.migrations:
            database = "the database untouched"
        elif all(m.has_downgrade for m in self.migrations):
            database = (f"the database downgraded to `{self.revision or 'base'}` with this release's own scripts "
                        "(the backup restored if that fails)")
        else:
            database = "the backup restored (a migration has no downgrade)"
        restore = (" A restore that would discard rows written after the backup waits for a decision instead."
                   if self.migrations else "")
        return (f"{start}: maintenance mode on, {database}, {code}, then health and critical paths checked "
                f"before traffic resumes.{restore}")


def release_brief(config: EnvironmentConfig, release: ResolvedRelease, migrations: MigrationStatus | None,
                  checks: list[StepRecord], reason: str, staging: EnvironmentConfig | None = None,
                  lint: LintReport | None = None, rehearsal: Rehearsal | None = None) -> ReleaseBrief:
    """Gathers the brief: the commits from the workspace, staging's state as it is now, the database kind.
    A brief with a gap is better than no approval form: git failing here is logged, not raised."""
    commits: list[Commit] | None
    try:
        commits = commits_between(config, release.live_sha, release.sha)
        dropped = [] if commits else commits_between(config, release.sha, release.live_sha)
    except DeployError as exc:
        get_run_logger().warning("Approval form: %s", exc)
        commits, dropped = None, []
    url = resolve_database_url(config)
    return ReleaseBrief(
        environment=config.name, release=release, reason=reason, commits=commits, dropped=dropped,
        migrations=list(migrations.pending) if migrations else [],
        revision=migrations.current if migrations else None, database=make_url(url).get_backend_name(),
        backup_directory=config.backups.directory, checks=checks,
        staging=staging_state(staging, release.sha), automatic_rollback=config.rollback.automatic,
        last_backup=latest_manifest(config.backups.directory), lint=lint, rehearsal=rehearsal)


def staging_state(staging: EnvironmentConfig | None, sha: str) -> str:
    """One line on staging, checked now: the approver may open the form long after the prerequisites ran."""
    if staging is None:
        return "none configured for this environment (prerequisites.staging_environment)"
    name = staging.name
    at = datetime.now(timezone.utc).strftime("%H:%M UTC")
    try:
        report = assess(staging, sha, f"check {name}", unverified_ok=True)
    except DeployError as exc:
        return f"`{name}` is **not healthy** at {at}: {_md(exc.cause)}"
    served = report.served
    if served.source == "health":
        return f"`{name}` is healthy at {at} and serves `{str(served.sha)[:12]}` (this release)"
    verdict = "this release" if served.is_release(sha) else "**not verified**"
    return f"`{name}` is healthy at {at}; {_md(served.describe())} ({verdict})"


_MARKDOWN = re.compile(r"([\\`*_\[\]<>|#])")


def _md(text: str) -> str:
    """`text` shown as it is: commit subjects and names are not markdown."""
    return _MARKDOWN.sub(r"\\\1", text)


def _count(items: list[Any], noun: str) -> str:
    return f"{len(items)} {noun}{'' if len(items) == 1 else 's'}"


def _clip(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
