"""post-deploy-watch: the runbook's "critical alerts monitored for 2 hours post-deployment".

Started once by every deploy that changed something (its own run, linked to the deploy), or by hand
for the live release. Every `watch.interval_seconds` for `watch.duration_seconds` it takes one sample:

    health          /health and /api/health healthy, still serving the watched SHA; with [fleet], on
                    every host too, each in the load balancer's rotation
    error rate      5xx share of the requests since the previous sample
    response time   p95 from the latency histogram, against the threshold and the pre-deploy baseline
    user activity   active users, against the pre-deploy figure (`watch.min_activity_ratio`)

from the app's /metrics or a Prometheus server (`monitoring.source`). A problem that persists for
`watch.breach_ticks` samples in a row is a critical alert: the stakeholders are told and, with
`watch.auto_rollback` on and the release still the live one, the rollback starts. A metrics source
that does not answer makes the watch inconclusive, which is alerted and never counted as a pass.
Between samples it sleeps: a watched hour costs a few CPU seconds (bench/watch_cost.py).

Outcomes (ledger `releases.watch`, the summary artifact, the end notification):
clean · breached (alerted; rolled back when allowed) · inconclusive · superseded (another deploy
or a rollback took over, or the release is no longer live).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from uuid import UUID

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger
from prefect.runtime import flow_run as current_run
from prefect.states import Completed, Failed, State

from deployments.config import EnvironmentConfig, load_environment
from deployments.errors import DeployError, InvalidInput
from deployments.logs import install_log_filters
from deployments.secrets import redact
from flows.rollback import launch_rollback
from tasks.fleet import fleet_problems
from tasks.health import assess
from records.ledger import Ledger, Release
from records.metrics import publish_metrics
from tasks.monitoring import Baseline, MetricsUnavailable, Window, judge, measured, metrics_source
from records.notifications import impact, notify


def run_name() -> str:
    params = current_run.parameters
    return f"watch {params['environment']}" + (f": deploy {str(params['deploy_run_id'])[:8]}"
                                               if params.get("deploy_run_id") else ": live release")


@dataclass
class Sample:
    at: str
    status: str  # ok | breach | no-data
    detail: str
    window: Window | None = None


@dataclass
class WatchResult:
    outcome: str
    message: str
    samples: list[Sample] = field(default_factory=list)
    alerts: list[str] = field(default_factory=list)
    rollback: str | None = None

    def counts(self) -> dict[str, int]:
        return {status: sum(1 for s in self.samples if s.status == status) for status in ("ok", "breach", "no-data")}


@flow(name="post-deploy-watch", flow_run_name=run_name)
def post_deploy_watch(environment: str, deploy_run_id: str | None = None, duration_seconds: int | None = None,
                      interval_seconds: int | None = None) -> State:
    """Watch a release after its deploy. `deploy_run_id` names the deploy (default: the live release);
    `duration_seconds` and `interval_seconds` override the environment file's [watch] for this run."""
    install_log_filters()  # first: a refused environment name is then one line, without traceback
    config = load_environment(environment)
    ledger = Ledger.for_state_dir(config.state_dir)
    release = watched_release(config, ledger, deploy_run_id)
    duration = duration_seconds or config.watch.duration_seconds
    interval = interval_seconds or config.watch.interval_seconds
    if duration < interval or interval < 1:
        raise InvalidInput(f"watch {environment}", f"duration {duration} s with an interval of {interval} s",
                           "give an interval of at least 1 s and a duration of at least one interval")
    ledger.update(release.id, watch={"run_id": str(current_run.id) if current_run.id else None,
                                     "outcome": "watching", "started_at": _now()})
    watch = Watch(config, ledger, release, duration, interval)
    result = watch.run()
    ledger.update(release.id, watch={"run_id": str(current_run.id) if current_run.id else None,
                                     "outcome": result.outcome, "started_at": watch.started_at,
                                     "finished_at": _now(), "samples": result.counts(),
                                     "alerts": result.alerts, "rollback": result.rollback})
    publish_summary(config, release, watch, result)
    notify(config, f"Watch of {environment} ended: {result.outcome}", result.message,
           alert=result.outcome not in ("clean", "superseded"))
    get_run_logger().info("Metrics: %s.", publish_metrics(config, ledger))
    if result.outcome in ("clean", "superseded"):
        return Completed(message=result.message)
    return Failed(message=result.message, name="Inconclusive" if result.outcome == "inconclusive" else "Failed")


def watched_release(config: EnvironmentConfig, ledger: Ledger, deploy_run_id: str | None) -> Release:
    step = f"watch {config.name}"
    if deploy_run_id:
        release = ledger.by_flow_run(deploy_run_id)
        if release is None or release.environment != config.name or release.rollback_of is not None:
            raise InvalidInput(step, f"no deploy of {config.name} with run id {deploy_run_id!r} in the ledger",
                               "check the run id; `deployctl status` lists the releases")
        if release.outcome != "succeeded" or release.dry_run:
            raise InvalidInput(step, f"the deploy {deploy_run_id} ended {release.outcome}; only a live release "
                               "is watched", "nothing to watch")
        return release
    live = ledger.last_succeeded(config.name)
    if live is None:
        raise InvalidInput(step, f"the ledger has no succeeded release of {config.name}", "deploy first")
    return live


class Watch:
    """The sampling loop: one sample per interval, streaks of problems, alerts, the rollback."""

    def __init__(self, config: EnvironmentConfig, ledger: Ledger, release: Release, duration: int,
                 interval: int) -> None:
        self.config = config
        self.ledger = ledger
        self.release = release
        self.duration = duration
        self.interval = interval
        self.sha = str(release.target_sha)
        self.baseline = Baseline(**release.baseline) if release.baseline else None
        self.source = metrics_source(config)
        self.logger = get_run_logger()
        self.started_at = _now()
        self.progress = _progress(config.name, release)

    def run(self) -> WatchResult:
        ticks = max(1, self.duration // self.interval)
        breach_ticks = self.config.watch.breach_ticks
        result = WatchResult("clean", "")
        self.logger.info("Watching %s %s for %d s: a sample every %d s from %s; %d bad samples in a row make a "
                         "critical alert.", self.config.name, self.sha[:12], self.duration, self.interval,
                         self.source.describe(), breach_ticks)
        try:
            if measured(self.config):
                self.source.read()  # the start of the first window
        except MetricsUnavailable:
            pass  # the first sample says so
        started = time.monotonic()
        breaches = no_data = 0
        for tick in range(1, ticks + 1):
            time.sleep(max(0.0, started + tick * self.interval - time.monotonic()))
            superseded = self.superseded()
            if superseded:
                result.outcome, result.message = "superseded", superseded
                break
            sample = self.sample()
            result.samples.append(sample)
            breaches = breaches + 1 if sample.status == "breach" else 0
            no_data = no_data + 1 if sample.status == "no-data" else 0
            log = self.logger.warning if sample.status != "ok" else self.logger.info
            log("Sample %d/%d: %s", tick, ticks, sample.detail)
            if self.progress is not None and (20 * tick) // ticks > (20 * (tick - 1)) // ticks:
                update_progress_artifact(self.progress, 100.0 * tick / ticks)  # in 5 % steps: an API call each
            if breaches == breach_ticks:
                alert = (f"{sample.detail} for {breaches} samples in a row "
                         f"({breaches * self.interval} s)")
                result.alerts.append(alert)
                result.outcome = "breached"
                result.rollback = self.critical_alert(alert)
                if result.rollback is not None:
                    result.message = f"Critical: {alert}. {result.rollback}."
                    break
            if no_data == breach_ticks:
                alert = f"no metrics for {no_data} samples in a row: {sample.detail}"
                result.alerts.append(alert)
                if result.outcome == "clean":
                    result.outcome = "inconclusive"
                self.inconclusive_alert(alert)
        if result.outcome == "clean" and any(s.status == "no-data" for s in result.samples) \
                and not any(s.status == "ok" for s in result.samples):
            result.outcome = "inconclusive"
        if not result.message:
            result.message = self.conclusion(result)
        return result

    def superseded(self) -> str | None:
        """Another deploy or rollback of the environment has begun, or this release is no longer live."""
        newer = [r for r in self.ledger.running(self.config.name) if r.id > self.release.id]
        if newer:
            return f"{newer[0].flow_run_name or 'another run'} started on {self.config.name}; the watch ends"
        live = self.ledger.last_succeeded(self.config.name)
        if live is None or live.id != self.release.id:
            return f"{self.sha[:12]} is no longer the live release of {self.config.name}; the watch ends"
        return None

    def sample(self) -> Sample:
        problems: list[str] = []
        try:
            assess(self.config, self.sha, f"watch {self.config.name}")
        except DeployError as exc:
            problems.append(f"unhealthy: {exc.cause}")
        if self.config.fleet is not None:  # every host, and the balancer's view of them
            problems += fleet_problems(self.config, self.sha, f"watch {self.config.name}")
        if not measured(self.config):
            if problems:
                return Sample(_now(), "breach", "; ".join(problems))
            return Sample(_now(), "ok", "healthy; error rate and response time not measured (no metrics)")
        try:
            observed = self.source.read()
        except MetricsUnavailable as exc:
            return Sample(_now(), "breach" if problems else "no-data", "; ".join([*problems, f"no metrics: {exc}"]))
        problems += self.judge(observed)
        figures = _figures(observed)
        if problems:
            return Sample(_now(), "breach", f"{'; '.join(problems)} ({figures})", observed)
        return Sample(_now(), "ok", figures, observed)

    def judge(self, observed: Window) -> list[str]:
        watch = self.config.watch
        problems = []
        if observed.requests >= watch.min_requests:
            problems += judge(self.config, observed, self.baseline, 0)
        base_users = self.baseline.active_users if self.baseline else None
        if watch.min_activity_ratio and base_users and observed.active_users is not None \
                and observed.active_users < watch.min_activity_ratio * base_users:
            problems.append(f"active users {observed.active_users:.0f}, below {watch.min_activity_ratio:.0%} of "
                            f"the pre-deploy {base_users:.0f}")
        return problems

    def critical_alert(self, alert: str) -> str | None:
        """Tell everyone; roll back when allowed and the release is still the live one. Returns what was
        started, or None when the watch goes on (no automatic rollback)."""
        release = self.ledger.get(self.release.id)
        still_live = self.superseded() is None
        if self.config.watch.auto_rollback and still_live:
            started = raise_alert(self.config, release, alert, "the release is rolled back now (code and database)")
            return launch_rollback(self.config.name, str(release.flow_run_id), f"automatic: post-deploy watch: {alert}",
                                   key=f"watch-rollback-{release.flow_run_id}", logger=self.logger) if started else None
        reason = ("watch.auto_rollback is off" if still_live else "the release is no longer live")
        raise_alert(self.config, release, alert, f"no automatic rollback ({reason}); decide now: "
                    f"run rollback/{self.config.name} to return to the previous release")
        return None

    def inconclusive_alert(self, alert: str) -> None:
        notify(self.config, f"ALERT: watch of {self.config.name} is blind",
               f"{alert}\n" + impact("post-deploy watch", f"{self.config.name} serves {self.sha[:12]}; its health is "
                                     "still checked, its error rate and response time are not",
                                     "restore the metrics source; the watch cannot pass without it"), alert=True)

    def conclusion(self, result: WatchResult) -> str:
        counts = result.counts()
        windows = [s.window for s in result.samples if s.window is not None]
        rates = [w.error_rate for w in windows if w.requests]
        p95s = [w.p95_seconds for w in windows if w.p95_seconds is not None]
        figures = (f"{sum(w.requests for w in windows):.0f} requests, error rate at most "
                   f"{max(rates):.2%}" if rates else "no traffic seen")
        if not measured(self.config):
            figures = "health only: error rate and response time not measured (monitoring.source = \"none\")"
        if p95s:
            figures += f", p95 at most {max(p95s) * 1000:.0f} ms"
        return (f"{self.config.name} {self.sha[:12]}: {result.outcome} after {len(result.samples)} samples "
                f"({counts['ok']} ok, {counts['breach']} with problems, {counts['no-data']} without metrics); "
                f"{figures}" + (f"; alerts: {' | '.join(result.alerts)}" if result.alerts else ""))


@task(name="raise-critical-alert", cache_policy=NO_CACHE, retries=0)
def raise_alert(config: EnvironmentConfig, release: Release, alert: str, next_step: str) -> bool:
    """A critical alert: visible as a task in the watch run, sent to every channel."""
    get_run_logger().error("Critical alert on %s: %s", config.name, alert)
    notify(config, f"CRITICAL: {config.name} {str(release.target_sha)[:12]} after deploy",
           f"{alert}\n" + impact("post-deploy watch", f"{config.name} serves {str(release.target_sha)[:12]} "
                                 f"({release.ref}) and it is misbehaving", next_step), alert=True)
    return True


def publish_summary(config: EnvironmentConfig, release: Release, watch: Watch, result: WatchResult) -> None:
    counts = result.counts()
    lines = [
        f"# Watch of {config.name}: **{result.outcome}**", "",
        f"Release `{release.ref}` → `{str(release.target_sha)[:12]}`, deployed by run {release.flow_run_name}",
        f"From {watch.started_at} for up to {watch.duration} s, a sample every {watch.interval} s from "
        f"{watch.source.describe()}", "",
        f"{result.message}", "",
        "| samples ok | with problems | without metrics |", "|---|---|---|",
        f"| {counts['ok']} | {counts['breach']} | {counts['no-data']} |", "",
        "## Thresholds",
        f"error rate ≤ {config.monitoring.max_error_rate:.2%} · p95 ≤ {config.monitoring.max_p95_seconds * 1000:.0f} "
        f"ms and ≤ {config.monitoring.max_p95_regression:g}× the pre-deploy "
        + (watch.baseline.describe() if watch.baseline else "(no baseline)"),
    ]
    if result.alerts:
        lines += ["", "## Alerts", *[f"- {a}" for a in result.alerts]]
    if result.rollback:
        lines += ["", f"Rollback: {result.rollback}"]
    notable = [s for s in result.samples if s.status != "ok"][-20:]
    if notable:
        lines += ["", "## Samples with problems (last 20)", "| at | status | detail |", "|---|---|---|"]
        lines += [f"| {s.at} | {s.status} | {s.detail[:200]} |" for s in notable]
    try:
        create_markdown_artifact(redact("\n".join(lines)), key=f"watch-{config.name}-summary",
                                 description=f"Post-deploy watch of {config.name}: {result.outcome}")
    except RuntimeError:
        pass  # outside a flow run


def _progress(environment: str, release: Release) -> UUID | None:
    try:
        return create_progress_artifact(0.0, key=f"watch-{environment}-progress",
                                        description=f"Post-deploy watch of {environment} {release.ref}")
    except RuntimeError:
        return None


def _figures(observed: Window) -> str:
    p95 = f"{observed.p95_seconds * 1000:.0f} ms" if observed.p95_seconds is not None else "n/a"
    users = f"{observed.active_users:.0f}" if observed.active_users is not None and not math.isnan(
        observed.active_users) else "n/a"
    rate = f"{observed.error_rate:.2%}" if observed.requests else "n/a"
    return f"{observed.requests:.0f} requests, error rate {rate}, p95 {p95}, active users {users}"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")

