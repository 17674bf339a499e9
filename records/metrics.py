"""The orchestrator's own metrics, computed from the ledger every time they are published.

Deploy, rollback and watch runs are separate processes, so no process can keep counters in memory:
each publication reads the whole ledger of the environment and states the figures afresh, in a
registry of its own (never prometheus-client's global one). They go to the Pushgateway named in
`[metrics] pushgateway_url` (the group job + environment, replaced whole on every push), else to a
node-exporter textfile, `<textfile_directory>/deploy_<environment>.prom` (default directory
`<state_dir>/metrics`), replaced atomically.

Series, each labelled with `environment` (dry runs are never counted):

    deploy_deployments{outcome}                deploys in the ledger by their current outcome; a release
                                               rolled back after going live counts as rolled_back
    deploy_rollbacks{outcome}                  rollback runs by their own outcome: succeeded (rolled
                                               back), failed, noop (nothing to undo), running
    deploy_last_duration_seconds               the last deploy that changed or tried to change production
    deploy_last_step_duration_seconds{step}    its steps; a step run in two phases (check-migrations)
                                               is summed
    deploy_last_phase_duration_seconds{phase}  its phases
    deploy_success_ratio                       succeeded over succeeded + failed + rolled_back +
                                               rollback_failed, whole ledger; absent before the first
    deploy_success_ratio_target                the runbook's target (95 %)
    deploy_last_success_timestamp_seconds      when the last deploy that is still `succeeded` finished

`aborted` deploys (approval refused, a prerequisite failed: nothing changed) and `noop` deploys are
counted in deploy_deployments but are neither successes nor failures of the ratio; `records.dora`
uses the same vocabulary over a window. Publishing never fails a deploy: a failure to read the
ledger, reach the Pushgateway or write the file is logged as a warning and described in the answer.
"""

from __future__ import annotations

import logging
from http.client import HTTPException
from pathlib import Path
from typing import Callable
from urllib.parse import unquote, urlsplit, urlunsplit

from prometheus_client import CollectorRegistry, Gauge, generate_latest, push_to_gateway, write_to_textfile
from prometheus_client.exposition import basic_auth_handler, default_handler
from sqlalchemy.exc import SQLAlchemyError

from deployments.config import EnvironmentConfig, ValueSource
from deployments.errors import DeployError
from deployments.secrets import MASK, redact, register_secret, resolve
from records.dora import CHANGED_PRODUCTION, SUCCEEDED, is_deploy, is_rollback_run, utc
from records.ledger import OUTCOMES, Ledger, Release

ROLLBACK_OUTCOMES = ("running", "succeeded", "failed", "noop")
PUSH_TIMEOUT_SECONDS = 10.0

logger = logging.getLogger("deploy.metrics")

Handler = Callable[..., Callable[[], None]]


def publish_metrics(config: EnvironmentConfig, ledger: Ledger) -> str:
    """Push or write the metrics of `config`'s environment; says where they went, or why they did not."""
    where = destination(config)
    try:
        registry = collect(config, ledger)
        if config.metrics.pushgateway_url:
            push(gateway_url(config), config.metrics.job, config.name, registry)
        else:
            path = textfile_path(config)
            path.parent.mkdir(parents=True, exist_ok=True)
            write_to_textfile(str(path), registry)
    except (OSError, ValueError, HTTPException, SQLAlchemyError, DeployError) as exc:
        message = f"metrics of {config.name} not published to {where}: {redact(str(exc))}"
        logger.warning("%s", message)
        return message
    return f"metrics of {config.name} published to {where}"


def render(config: EnvironmentConfig, ledger: Ledger) -> bytes:
    """The metrics in the Prometheus text exposition format."""
    return generate_latest(collect(config, ledger))


def gateway_url(config: EnvironmentConfig) -> str:
    """The Pushgateway's URL: written in the file, or (with credentials) from a variable or Secret block."""
    url = config.metrics.pushgateway_url
    if isinstance(url, ValueSource):
        return resolve(url, "metrics.pushgateway_url", config)
    return str(url)


def destination(config: EnvironmentConfig) -> str:
    url = config.metrics.pushgateway_url
    if url:
        shown = shown_url(url) if isinstance(url, str) else (
            f"${url.env}" if url.env else f"Secret block {url.secret}")
        return f"the Pushgateway at {shown} (job={config.metrics.job}, environment={config.name})"
    return f"the textfile {textfile_path(config)}"


def textfile_path(config: EnvironmentConfig) -> Path:
    directory = config.metrics.textfile_directory or config.state_dir / "metrics"
    return directory / f"deploy_{config.name}.prom"


def push(url: str, job: str, environment: str, registry: CollectorRegistry) -> None:
    """Replace the group job + environment on the Pushgateway (PUT): a series that is gone from the
    ledger's figures, such as a step the last deploy did not run, is gone from the gateway too."""
    gateway, handler = gateway_and_handler(url)
    push_to_gateway(gateway, job=job, registry=registry, grouping_key={"environment": environment},
                    timeout=PUSH_TIMEOUT_SECONDS, handler=handler)


def shown_url(url: str) -> str:
    """The URL as logs may show it: a password, or a user name standing alone as a token, masked."""
    parts = urlsplit(url)
    if parts.username is not None and parts.password is None:
        return urlunsplit(parts._replace(netloc=f"{MASK}@{parts.netloc.rpartition('@')[2]}"))
    return redact(url)


def gateway_and_handler(url: str) -> tuple[str, Handler]:
    """`http://user:password@host:9091` becomes the bare URL and HTTP basic auth: urllib would take
    the credentials for part of the host name. The password is registered for redaction."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url, default_handler
    username, password = unquote(parts.username or ""), unquote(parts.password or "")
    register_secret(password if parts.password is not None else username)
    bare = urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))

    def handler(url: str, method: str, timeout: float | None, headers: list[tuple[str, str]],
                data: bytes) -> Callable[[], None]:
        return basic_auth_handler(url, method, timeout, headers, data, username, password)

    return bare, handler


def collect(config: EnvironmentConfig, ledger: Ledger) -> CollectorRegistry:
    """A fresh registry holding the figures the ledger gives now."""
    env = config.name
    releases = list(ledger.all_releases(env))
    deploys = [r for r in releases if is_deploy(r)]
    rollbacks = [r for r in releases if is_rollback_run(r)]
    registry = CollectorRegistry()

    deployments = Gauge("deploy_deployments", "Deploys recorded in the ledger, by current outcome (dry runs "
                        "excluded; a release rolled back after going live counts as rolled_back)",
                        ["environment", "outcome"], registry=registry)
    for outcome in OUTCOMES:
        deployments.labels(env, outcome).set(sum(r.outcome == outcome for r in deploys))

    rollback_runs = Gauge("deploy_rollbacks", "Rollback runs recorded in the ledger, by their own outcome "
                          "(succeeded: the previous release is back)", ["environment", "outcome"], registry=registry)
    for outcome in ROLLBACK_OUTCOMES:
        rollback_runs.labels(env, outcome).set(sum(r.outcome == outcome for r in rollbacks))

    changed = [r for r in deploys if r.outcome in CHANGED_PRODUCTION]
    succeeded = [r for r in changed if r.outcome == SUCCEEDED]
    ratio = Gauge("deploy_success_ratio", "Succeeded deploys over deploys that changed or tried to change "
                  f"production ({', '.join(CHANGED_PRODUCTION)}), whole ledger", ["environment"], registry=registry)
    if changed:
        ratio.labels(env).set(len(succeeded) / len(changed))
    Gauge("deploy_success_ratio_target", "The runbook's target for deploy_success_ratio", ["environment"],
          registry=registry).labels(env).set(config.metrics.success_target)

    last_success = Gauge("deploy_last_success_timestamp_seconds", "When the last deploy that is still succeeded "
                         "finished, in unix seconds", ["environment"], registry=registry)
    finished = [r.finished_at for r in succeeded if r.finished_at is not None]
    if finished:
        last_success.labels(env).set(utc(finished[-1]).timestamp())

    last = next((r for r in reversed(changed) if r.finished_at is not None), None)
    _last_deploy(registry, ledger, env, last)
    return registry


def _last_deploy(registry: CollectorRegistry, ledger: Ledger, env: str, last: Release | None) -> None:
    about = "the last deploy that changed or tried to change production"
    duration = Gauge("deploy_last_duration_seconds", f"Duration of {about}, start to finish",
                     ["environment"], registry=registry)
    steps = Gauge("deploy_last_step_duration_seconds", f"Duration of each step of {about}; a step run in "
                  "several phases is summed", ["environment", "step"], registry=registry)
    phases = Gauge("deploy_last_phase_duration_seconds", f"Duration of each phase of {about}",
                   ["environment", "phase"], registry=registry)
    if last is None or last.finished_at is None:
        return
    duration.labels(env).set((utc(last.finished_at) - utc(last.started_at)).total_seconds())
    totals: dict[str, float] = {}
    for step in ledger.steps(last.id):
        if step.seconds is not None:
            totals[step.name] = totals.get(step.name, 0.0) + step.seconds
    for name, seconds in totals.items():
        steps.labels(env, name).set(seconds)
    for phase, seconds in (last.timings or {}).items():
        if isinstance(seconds, (int, float)):
            phases.labels(env, phase).set(seconds)

