"""The DORA figures of one environment, from the ledger: how often we deploy, how long a commit waits
to be live, how often a deploy fails, and how long production takes to recover from one.

What counts, for deploys (ledger rows that are not rollback runs, and not dry runs) that finished in
the window:

- deployment frequency: deploys whose outcome is `succeeded`, per day and per week;
- lead time for changes: `commit_time` of the target commit → `finished_at`, of those deploys;
- change failure rate: deploys that failed (`failed`, `rolled_back`, `rollback_failed`) over the deploys
  that changed or tried to change production (those plus `succeeded`). A release that went live and
  was later rolled back by the post-deploy watch is `rolled_back`, so it counts as a failure;
- time to restore: `finished_at` of a failed deploy (the failure, or the moment a release the watch
  later rolled back went live) → `restored_at` (the previous version verified healthy again);
- success ratio: succeeded over the same denominator, against the runbook's target (95 %).

`aborted` deploys (refused approval, a failed prerequisite: nothing in production changed) and `noop`
deploys (already live) are neither successes nor failures; they are counted beside the figures.
The metrics (`records.metrics`) use the same vocabulary, over the whole ledger instead of a window.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone
from typing import Any
from uuid import UUID

from records.ledger import Ledger, Release

SUCCEEDED = "succeeded"
FAILED = ("failed", "rolled_back", "rollback_failed")
# The denominator of the success ratio and the change failure rate: deploys that changed production or
# tried to. aborted and noop changed nothing.
CHANGED_PRODUCTION = (SUCCEEDED, *FAILED)
DEFAULT_DAYS = 30
DEFAULT_TARGET = 0.95
NO_DEPLOYS = "no deploys in the window"
NOTHING_CHANGED = "no deploy changed production in the window"


@dataclass(frozen=True)
class DoraFigures:
    environment: str
    days: int
    window_start: datetime
    window_end: datetime
    deployments: int
    deployments_per_day: float
    deployments_per_week: float
    lead_time_median_seconds: float | None
    lead_time_p90_seconds: float | None
    changed: int
    failures: int
    change_failure_rate: float | None
    restore_median_seconds: float | None
    restored: int
    not_restored: int
    aborted: int
    noop: int
    success_ratio: float | None
    success_target: float

    @property
    def empty(self) -> bool:
        """No deploy changed production in the window: there is no ratio to give."""
        return self.changed == 0

    @property
    def verdict(self) -> str:
        if self.changed + self.aborted + self.noop == 0:
            return NO_DEPLOYS
        if self.empty:
            return NOTHING_CHANGED
        return "met" if self.target_met else "not met"

    @property
    def target_met(self) -> bool | None:
        return None if self.success_ratio is None else self.success_ratio >= self.success_target

    def as_dict(self) -> dict[str, Any]:
        figures = asdict(self)
        figures["window_start"] = self.window_start.isoformat()
        figures["window_end"] = self.window_end.isoformat()
        figures["target_met"] = self.target_met
        return figures


def is_rollback_run(release: Release) -> bool:
    """A row of a rollback run. One that failed before it named the release it undoes (the lock, or
    nothing to roll back) has no `rollback_of`; its row says `failed` without having changed
    anything, which a deploy's row never does (that deploy would be `aborted`)."""
    if release.rollback_of is not None:
        return True
    return (not release.dry_run and release.outcome == "failed"
            and not (release.code_changed or release.migration_started))


def is_deploy(release: Release) -> bool:
    """A deploy that was meant to change production: not a rollback run, not a dry run."""
    return not release.dry_run and not is_rollback_run(release)


def dora_figures(ledger: Ledger, environment: str, days: int = DEFAULT_DAYS, target: float = DEFAULT_TARGET,
                 now: datetime | None = None) -> DoraFigures:
    """The figures of the deploys of `environment` that finished in the `days` before `now`."""
    if days < 1:
        raise ValueError(f"days must be at least 1, got {days}")
    end = utc(now) if now is not None else datetime.now(timezone.utc)
    start = end - timedelta(days=days)
    deploys = [r for r in ledger.all_releases(environment)
               if is_deploy(r) and r.finished_at is not None and start < utc(r.finished_at) <= end]
    return _figures(deploys, environment, days, start, end, target)


def _figures(deploys: list[Release], environment: str, days: int, start: datetime, end: datetime,
               target: float) -> DoraFigures:
    succeeded = [r for r in deploys if r.outcome == SUCCEEDED]
    failed = [r for r in deploys if r.outcome in FAILED]
    changed = len(succeeded) + len(failed)
    lead_times = [seconds_between(r.commit_time, r.finished_at) for r in succeeded
                  if r.commit_time is not None and r.finished_at is not None]
    restores = [seconds_between(r.finished_at, r.restored_at) for r in failed
                if r.finished_at is not None and r.restored_at is not None]
    return DoraFigures(
        environment=environment,
        days=days,
        window_start=start,
        window_end=end,
        deployments=len(succeeded),
        deployments_per_day=len(succeeded) / days,
        deployments_per_week=len(succeeded) * 7 / days,
        lead_time_median_seconds=statistics.median(lead_times) if lead_times else None,
        lead_time_p90_seconds=percentile(lead_times, 0.9) if lead_times else None,
        changed=changed,
        failures=len(failed),
        change_failure_rate=len(failed) / changed if changed else None,
        restore_median_seconds=statistics.median(restores) if restores else None,
        restored=len(restores),
        not_restored=len(failed) - len(restores),
        aborted=sum(r.outcome == "aborted" for r in deploys),
        noop=sum(r.outcome == "noop" for r in deploys),
        success_ratio=len(succeeded) / changed if changed else None,
        success_target=target,
    )


def percentile(values: list[float], fraction: float) -> float:
    """Linear interpolation between the closest ranks (numpy's default): p90 of 1..10 is 9.1."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * fraction
    below, above = math.floor(position), math.ceil(position)
    return ordered[below] + (ordered[above] - ordered[below]) * (position - below)


def utc(moment: datetime) -> datetime:
    # SQLite hands datetimes back naive; the ledger writes them in UTC.
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def seconds_between(start: datetime, end: datetime) -> float:
    return (utc(end) - utc(start)).total_seconds()


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    whole = int(round(seconds))
    days, rest = divmod(whole, 86_400)
    hours, rest = divmod(rest, 3_600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


def _percent(ratio: float | None) -> str:
    return "—" if ratio is None else f"{100 * ratio:.1f} %"


def rows(figures: DoraFigures) -> list[tuple[str, str]]:
    """(figure, value) pairs, shared by the text table and the markdown artifact."""
    f = figures
    return [
        ("deployment frequency", f"{f.deployments} succeeded deploy{'' if f.deployments == 1 else 's'}: "
         f"{f.deployments_per_day:.2f} a day, {f.deployments_per_week:.2f} a week"),
        ("lead time for changes",
         f"median {duration(f.lead_time_median_seconds)}, p90 {duration(f.lead_time_p90_seconds)}"),
        ("change failure rate",
         f"{_percent(f.change_failure_rate)} ({f.failures} of {f.changed} deploys that changed production)"),
        ("time to restore",
         f"median {duration(f.restore_median_seconds)} ({f.restored} restored, {f.not_restored} not restored)"),
        ("success ratio", f"{_percent(f.success_ratio)} against the {100 * f.success_target:g} % target: {f.verdict}"),
        ("changed nothing", f"{f.aborted} aborted, {f.noop} noop"),
    ]


def _title(figures: DoraFigures) -> str:
    return (f"DORA figures for {figures.environment}, last {figures.days} days "
            f"({figures.window_start:%Y-%m-%d %H:%M} to {figures.window_end:%Y-%m-%d %H:%M} UTC)")


def render_table(figures: DoraFigures) -> str:
    lines = [_title(figures)]
    if figures.empty:
        lines.append(figures.verdict)
    lines.append("")
    table = rows(figures)
    width = max(len(name) for name, _ in table)
    lines += [f"{name:<{width}}  {value}" for name, value in table]
    return "\n".join(lines) + "\n"


def render_markdown(figures: DoraFigures) -> str:
    lines = [f"# {_title(figures)}", ""]
    if figures.empty:
        lines += [f"**{figures.verdict}**", ""]
    lines += ["| figure | value |", "|---|---|"]
    lines += [f"| {name} | {value} |" for name, value in rows(figures)]
    lines += ["", "Counted: deploys that finished in the window; dry runs and rollback runs are not deploys. "
              "A release the post-deploy watch rolled back counts as a failed deploy."]
    return "\n".join(lines)


def artifact_key(environment: str) -> str:
    return f"dora-{environment}"


def publish_dora_artifact(figures: DoraFigures) -> UUID:
    """The figures as the markdown artifact `dora-<environment>` (a new version of the same key each time),
    attached to the flow or task run that publishes it, if any. A Prefect API must be reachable; its
    errors (httpx.HTTPError) propagate.

    Through the client rather than `create_markdown_artifact`: outside a run (`deployctl dora`) that
    still works in Prefect 3.9 but warns that it will stop doing so."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import ArtifactCreate
    from prefect.runtime import flow_run, task_run

    artifact = ArtifactCreate(key=artifact_key(figures.environment), type="markdown",
                              description=f"DORA figures for {figures.environment}, last {figures.days} days",
                              data=render_markdown(figures), flow_run_id=flow_run.id, task_run_id=task_run.id)
    with get_client(sync_client=True) as client:
        return client.create_artifact(artifact).id
