"""The app as the runbook's steps see it: its environment verified, restarted on the checked-out
code (`tasks.reload` says how), its startup log watched, and traffic stopped and resumed around a
rollback.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Sequence

from deployments.config import EnvironmentConfig
from deployments.errors import ServiceError
from deployments.secrets import redact, resolve_app_environment
from deployments.logs import run_log
from tasks.app_commands import app_command
from tasks.process_state import age, children, running_pid
from tasks.processes import Advice, run
from tasks.reload import reload
from tasks.steps import change_step, read_step


def log_offset(config: EnvironmentConfig) -> int:
    try:
        return config.service.startup_log.stat().st_size
    except FileNotFoundError:
        return 0


def scan_startup_log(config: EnvironmentConfig, offset: int) -> list[str]:
    """Lines written to the startup log since `offset` that match one of the configured error patterns."""
    return scan_log(config.service.startup_log, config.service.error_patterns, offset)


def scan_log(path: Path, error_patterns: Sequence[str], offset: int = 0) -> list[str]:
    """Lines of `path` after byte `offset` that match one of `error_patterns`; none if it does not exist."""
    patterns = [re.compile(p) for p in error_patterns]
    try:
        with open(path, "rb") as handle:
            handle.seek(offset)
            text = handle.read().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return []
    return [line for line in text.splitlines() if any(p.search(line) for p in patterns)]


@read_step("verify-environment", retries=0)
def verify_environment(config: EnvironmentConfig) -> str:
    """Runbook step 6: every variable the app needs is configured and every secret resolves."""
    app_env = resolve_app_environment(config)
    secret_names = sorted([*config.service.secrets, *config.database.variables])
    return (f"{len(app_env)} variables configured; secrets resolved from their sources: "
            f"{', '.join(secret_names)} (values not shown)")


@change_step("restart-application")
def restart_application(config: EnvironmentConfig) -> str:
    """Restart the app on the checked-out code; a release that cannot import is never reloaded."""
    app_env = resolve_app_environment(config)
    step = f"restart application ({config.name})"
    if config.service.preflight_command:
        result = run(app_command(config, config.service.preflight_command, app_env, timeout=120), step=step,
                     error=ServiceError, advice=Advice(start="check service.preflight_command",
                                                       slow="the running release was not touched; fix the release"))
        if not result.ok:
            raise ServiceError(step, f"the release fails its preflight ({result.error_line()})",
                               "the running release was not touched; fix the release")
    pid = reload(config, app_env, config.service.workers)
    return f"serving from master pid {pid} ({config.service.reload})"


@read_step("watch-startup-logs", retries=0)
def watch_startup_logs(config: EnvironmentConfig, offset: int) -> str:
    """Warning of step 4: no error pattern in the log for the grace time after the restart. The grace
    counts from the moment the new workers answer HTTP (any status): an app that takes 10 s to boot
    is watched for its first `grace_seconds` of serving, not for the time it spent importing.
    Everything logged since the restart began is read too."""
    step = f"watch startup logs ({config.name})"
    answered = _first_answer(config, offset, step)
    deadline = answered + config.service.grace_seconds
    while True:
        _raise_on_errors(config, offset, step)
        if time.monotonic() >= deadline:
            return (f"no error pattern in {config.service.startup_log} for {config.service.grace_seconds:g} s "
                    "after the new workers first answered")
        time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))


def _first_answer(config: EnvironmentConfig, offset: int, step: str) -> float:
    """When the app first answers its liveness URL, watching the log meanwhile; bounded by the health
    deadline (the health check that follows says why an app that never answers is down)."""
    from tasks.health import probe

    url = config.service.base_url + config.health.path
    deadline = time.monotonic() + config.health.deadline_seconds
    said = False
    while True:
        _raise_on_errors(config, offset, step)
        answer = probe(url, min(config.health.timeout_seconds, 2.0))
        if answer.status_code is not None or time.monotonic() >= deadline:
            return time.monotonic()
        if not said:
            run_log().info("%s: waiting for the new workers to answer %s (up to %g s)", step, url,
                           config.health.deadline_seconds)
            said = True
        time.sleep(0.2)


def _raise_on_errors(config: EnvironmentConfig, offset: int, step: str) -> None:
    matches = scan_startup_log(config, offset)
    if matches:
        raise ServiceError(step, f"{len(matches)} error line(s) after the restart, first: {redact(matches[0])[:300]}",
                           f"read {config.service.startup_log}")


def started_before(config: EnvironmentConfig, moment: float) -> bool:
    """Every process of the running app (its master and each worker) started before `moment` (epoch
    seconds): they all imported the code that was on disk then. False when no app runs."""
    master = running_pid(config)
    if master is None:
        return False
    now = time.time()
    return all(now - age(pid) < moment for pid in [master, *children(master)])


def _run_app_command(config: EnvironmentConfig, argv: list[str], step: str) -> None:
    command = app_command(config, argv, resolve_app_environment(config), timeout=60)
    run(command, step=step, error=ServiceError, advice=Advice(start="check the command in [service]",
                                                              slow="check the command in [service]",
                                                              failed="check the command in [service]"))


@change_step("stop-traffic")
def stop_traffic(config: EnvironmentConfig) -> str:
    """Rollback, immediate action: stop traffic to the new deployment (maintenance mode)."""
    if not config.service.maintenance_on_command:
        return "no maintenance_on_command configured: traffic keeps flowing during the rollback"
    _run_app_command(config, config.service.maintenance_on_command, f"stop traffic ({config.name})")
    return "maintenance mode on: the app answers 503 with Retry-After"


@change_step("resume-traffic")
def resume_traffic(config: EnvironmentConfig) -> str:
    if not config.service.maintenance_off_command:
        return "no maintenance_off_command configured"
    _run_app_command(config, config.service.maintenance_off_command, f"resume traffic ({config.name})")
    return "maintenance mode off: traffic resumed"
