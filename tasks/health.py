"""Health of the app: `/health` (liveness) and `/api/health` (services and the SHA it serves).

Redirects are never followed: a health endpoint that answers 3xx is misconfigured, so unhealthy.
Every request has a total deadline, so an endpoint that accepts and never answers costs at most
`timeout_seconds`.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from deployments.config import EnvironmentConfig
from deployments.errors import HealthCheckFailed
from tasks import http, read_step


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
    version: str | None

    def describe(self) -> str:
        return (f"{self.liveness.url} HTTP {self.liveness.status_code}; {self.api.url} HTTP "
                f"{self.api.status_code}, status {(self.api.body or {}).get('status')!r}, "
                f"serves {(self.version or 'unknown')[:12]}")


def assess(config: EnvironmentConfig, expected_sha: str | None, step: str, allow_maintenance: bool = False) -> HealthReport:
    """Both endpoints healthy, every required service ok and, when asked, the expected SHA served."""
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
    return HealthReport(liveness, api, version)


@read_step("check-staging-health", retries=2)
def check_staging_health(staging: EnvironmentConfig, expected_sha: str | None = None) -> HealthReport:
    """Runbook step 1: staging answers HTTP 200 and every service is operational."""
    return assess(staging, expected_sha, f"check staging health ({staging.name})")


@read_step("check-health", retries=0)
def check_health(config: EnvironmentConfig, expected_sha: str | None, allow_maintenance: bool = False) -> HealthReport:
    """Runbook step 7: /health and /api/health healthy, serving the deployed SHA. Call it with
    `.with_options(retries=...)` so a slow start is retried within the deadline, visibly.
    During a rollback the app is in maintenance: its services and version still count."""
    return assess(config, expected_sha, f"check health ({config.name})", allow_maintenance)
