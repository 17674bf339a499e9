"""Health of the app: `/health` (liveness) and `/api/health` (services and the SHA it serves).

Which release is served is what `tasks.served_version` shows: the health answer's `version`, or, for
an app that reports none, its version command or file, or the workspace. A check that expects a SHA
fails when another one is shown, and when none is, unless its caller can go on without (`unverified_ok`).

After a reload, health must hold, not just appear (`hold`): good within the deadline, then good on
`stable_checks` consecutive checks spanning at least `stable_seconds`. A release that answers 200 as
it boots and 500 a few seconds later fails there, on a quiet machine or a loaded one, instead of
being called a success and left to the watch.

Redirects are never followed: a health endpoint that answers 3xx is misconfigured, so unhealthy.
Every request has a total deadline, so an endpoint that accepts and never answers costs at most
`timeout_seconds`.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from dataclasses import dataclass, field
from collections.abc import Callable
from typing import Any

import httpx

from deployments.config import EnvironmentConfig
from deployments.errors import HealthCheckFailed
from deployments.logs import run_log
from tasks import http
from tasks.served_version import UNSEEN_ACTION, Processes, Served, VersionNotVerified, served_version
from tasks.steps import read_step


@dataclass(frozen=True)
class Probe:
    url: str
    status_code: int | None
    body: dict[str, Any] | None = None
    error: str | None = None
    elapsed_ms: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status_code == 200 and self.error is None

    def describe(self) -> str:
        if self.error:
            return f"{self.url} did not answer ({self.error})"
        return f"{self.url} answered HTTP {self.status_code}"


def probe(url: str, timeout: float, transport: httpx.BaseTransport | None = None) -> Probe:
    started = time.perf_counter()
    answers: list[Probe] = []
    # httpx's timeout bounds each read, not the request: a server that sends a byte now and then
    # would keep it waiting forever. So the request runs on a thread that is waited for at most
    # `timeout`; one that is still waiting then ends on its own when the server gives up.
    worker = threading.Thread(target=lambda: answers.append(_get(url, timeout, transport, started)), daemon=True)
    worker.start()
    worker.join(timeout)
    if not answers:
        return Probe(url, None, error=f"no answer within {timeout:g} s", elapsed_ms=_ms(started))
    return answers[0]


def _get(url: str, timeout: float, transport: httpx.BaseTransport | None, started: float) -> Probe:
    try:
        with http.client(timeout=timeout, transport=transport) as client:
            response = client.get(url, headers={"Cache-Control": "no-cache"})
    except httpx.TimeoutException:
        return Probe(url, None, error=f"no answer within {timeout:g} s", elapsed_ms=_ms(started))
    except httpx.HTTPError as exc:
        return Probe(url, None, error=f"{type(exc).__name__}: {exc}", elapsed_ms=_ms(started))
    try:
        body = response.json()
    except ValueError:
        body = None
    return Probe(
        url,
        response.status_code,
        body if isinstance(body, dict) else None,
        elapsed_ms=_ms(started),
        headers=dict(response.headers),
    )


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 1)


@dataclass(frozen=True)
class HealthReport:
    liveness: Probe
    api: Probe
    version: str | None  # what the health answer says, whether or not it is checked
    served: Served
    checks: int = 1  # consecutive good checks behind this report
    held_seconds: float = 0.0  # from the first of them to the last

    def describe(self) -> str:
        held = f"; held for {self.checks} checks over {self.held_seconds:.1f} s" if self.checks > 1 else ""
        status = (self.api.body or {}).get("status")  # an app whose answer is a bare `true` says none
        said = f", status {status!r}" if status is not None else ""
        api = "" if self.api.url == self.liveness.url else f"; {self.api.url} HTTP {self.api.status_code}"
        return f"{self.liveness.url} HTTP {self.liveness.status_code}{api}{said}, {self.served.describe('serves')}{held}"


def assess(config: EnvironmentConfig, expected_sha: str | None, step: str, allow_maintenance: bool = False,
           unverified_ok: bool = False, processes: Processes | None = None) -> HealthReport:
    """Both endpoints healthy, every required service ok and, when asked, the expected SHA served: shown
    served, or (`unverified_ok`) at least not shown to be another one. `processes`: a canary's."""
    base = config.service.base_url
    timeout = config.health.timeout_seconds
    liveness = probe(base + config.health.path, timeout)
    api = probe(base + config.health.api_path, timeout)
    body = api.body or {}
    in_maintenance = allow_maintenance and body.get("maintenance") is True
    services = body.get("services") if isinstance(body.get("services"), dict) else {}
    broken = [f"{name}: {(services.get(name) or {}).get('detail') or (services.get(name) or {}).get('status', 'missing')}"
              for name in config.health.required_services
              if (services.get(name) or {}).get("status") != "ok"]
    for answer in (liveness, api):
        if not answer.ok and not (in_maintenance and answer.status_code == 503):
            hint = " (redirects are not followed: point health at the final URL)" if (
                answer.status_code or 0) in range(300, 400) else ""
            # An app answers 503 because a service is down: the status alone does not say which.
            if answer is api and services and broken:
                hint += f"; unhealthy services: {'; '.join(broken)}"
            raise HealthCheckFailed(step, answer.describe() + hint,
                                    "read the app's log; the deploy does not continue on an unhealthy app")
    if broken:
        raise HealthCheckFailed(step, f"{api.url} reports unhealthy services ({'; '.join(broken)})",
                                "fix the service named; the deploy does not continue")
    version = body.get("version") if isinstance(body.get("version"), str) else None
    if config.health.check_version and expected_sha is not None and version != expected_sha:
        raise HealthCheckFailed(step, f"{api.url} serves {str(version)[:12]}, expected {expected_sha[:12]}",
                                "the reload did not take; read the app's log")
    served = served_version(config, api.body, step, processes)
    if expected_sha is not None and served.verified and not served.is_release(expected_sha):
        raise HealthCheckFailed(step, f"{served.describe()}, expected {expected_sha[:12]}",
                                "the reload did not take; read the app's log")
    if expected_sha is not None and not served.verified and not unverified_ok:
        raise VersionNotVerified(step, f"{served.describe()} (expected {expected_sha[:12]})", UNSEEN_ACTION)
    return HealthReport(liveness, api, version, served)


def hold(config: EnvironmentConfig, expected_sha: str | None, step: str, log: Callable[[str], None],
         allow_maintenance: bool = False, unverified_ok: bool = False, clock: Callable[[], float] = time.monotonic,
         sleep: Callable[[float], None] = time.sleep) -> HealthReport:
    """Health good within `deadline_seconds`, then good on `stable_checks` consecutive checks spanning
    at least `stable_seconds`, checked once a second at most. Before the first good check a failure is
    retried until the deadline (the app may still be starting); after it, one failure fails the step."""
    settings = config.health
    interval = min(1.0, settings.stable_seconds / (settings.stable_checks - 1)) if settings.stable_checks > 1 else 1.0
    started = clock()
    first_good: float | None = None
    good = 0
    said_waiting = False
    while True:
        try:
            report = assess(config, expected_sha, step, allow_maintenance, unverified_ok)
        except HealthCheckFailed as exc:
            now = clock()
            if first_good is not None:
                raise HealthCheckFailed(step, f"healthy at first, then {exc.cause} {now - first_good:.1f} s later "
                                        f"(after {good} good checks)",
                                        "the release does not hold its health; read the app's log") from None
            if now - started >= settings.deadline_seconds:
                raise HealthCheckFailed(step, f"{exc.cause} (not healthy within {settings.deadline_seconds:g} s)",
                                        exc.action) from None
            if not said_waiting:
                log(f"{step}: not healthy yet ({exc.cause}); checking each second for up to "
                    f"{settings.deadline_seconds:g} s")
                said_waiting = True
            sleep(1.0)
            continue
        now = clock()
        if first_good is None:
            first_good = now
            if settings.stable_checks > 1:
                log(f"{step}: healthy; it must stay so for {settings.stable_checks} checks over "
                    f"{settings.stable_seconds:g} s")
        good += 1
        if good >= settings.stable_checks and now - first_good >= settings.stable_seconds:
            return dataclasses.replace(report, checks=good, held_seconds=round(now - first_good, 1))
        sleep(interval)


@read_step("check-staging-health", retries=2)
def check_staging_health(staging: EnvironmentConfig, expected_sha: str | None = None,
                         unverified_ok: bool = False) -> HealthReport:
    """Runbook step 1: staging answers HTTP 200 and every service is operational."""
    return assess(staging, expected_sha, f"check staging health ({staging.name})", unverified_ok=unverified_ok)


@read_step("check-health", retries=0)
def check_health(config: EnvironmentConfig, expected_sha: str | None, allow_maintenance: bool = False,
                 held: bool = True, unverified_ok: bool = False) -> HealthReport:
    """Runbook step 7: /health and /api/health healthy, serving the deployed SHA, and holding so over
    the stability window (`hold`). `held=False` takes the first good answer: the rollback, which
    brings back a release that already held, calls it so with `.with_options(retries=...)`.
    During a rollback the app is in maintenance: its services and version still count.
    `unverified_ok`: a served SHA nothing can show passes, said as not verified (never another SHA)."""
    step = f"check health ({config.name})"
    if not held:
        return assess(config, expected_sha, step, allow_maintenance, unverified_ok)
    return hold(config, expected_sha, step, run_log().info, allow_maintenance, unverified_ok)
