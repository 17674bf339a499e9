"""Critical-path tests: each configured check is one HTTP call whose answer must have a status, keys
and values, within its budget. Its request is a template (tasks/request_templates): values from
earlier answers and from the check's secrets go anywhere in it. The checks share one client, so a
session cookie a login sets is sent with the checks after it.

What a result says is the request (method and path, never a header, a body or a secret) and what
failed; every value a secret source gave, and every answer value sent in a header (a token), is masked.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Mapping

import httpx

from deployments.config import CriticalPathCheck, EnvironmentConfig
from deployments.errors import HealthCheckFailed
from deployments.secrets import redact, register_secret, resolve
from tasks.request_templates import fill, unmet
from tasks.steps import read_step

DEFAULT_HEADERS = {"X-User-Id": "release-check", "User-Agent": "deployctl-smoke"}


@dataclass(frozen=True)
class PathResult:
    name: str
    ok: bool
    status_code: int | None
    elapsed_ms: float
    detail: str


def check_secrets(config: EnvironmentConfig, check: CriticalPathCheck) -> dict[str, str]:
    """The check's secret values, resolved now (and registered, so every message masks them)."""
    return {name: resolve(source, f"critical_paths.{check.name}.secrets.{name}", config)
            for name, source in check.secrets.items()}


def run_checks(base_url: str, checks: list[CriticalPathCheck], timeout: float,
               transport: httpx.BaseTransport | None = None,
               secrets: Mapping[str, Mapping[str, str]] | None = None) -> list[PathResult]:
    """Run every check in order; a check whose input depends on a failed one fails too, saying so.
    `secrets`: each check's resolved secret values, by check name."""
    answers: dict[str, Any] = {}
    results = []
    with httpx.Client(base_url=base_url, timeout=timeout, follow_redirects=False, headers=DEFAULT_HEADERS,
                      transport=transport) as client:
        for check in checks:
            result = _run(client, check, answers, (secrets or {}).get(check.name, {}))
            results.append(PathResult(result.name, result.ok, result.status_code, result.elapsed_ms,
                                      redact(result.detail)))
    return results


def _run(client: httpx.Client, check: CriticalPathCheck, answers: dict[str, Any], secrets: Mapping[str, str]) -> PathResult:
    request = f"{check.method} {check.path}"
    try:
        path = fill(check.path, answers, secrets)
        headers = {name: str(fill(value, answers, secrets)) for name, value in check.headers.items()}
        for name, value in headers.items():
            if value != check.headers[name]:
                register_secret(value.split()[-1] if " " in value else value)  # a token taken from an answer
        query = {name: str(fill(value, answers, secrets)) for name, value in check.query.items()}
        body = fill(check.json_body, answers, secrets) if check.json_body is not None else None
        form = {name: str(fill(value, answers, secrets)) for name, value in check.form.items()} if check.form else None
    except LookupError as exc:
        return PathResult(check.name, False, None, 0.0, f"{request} not run: {exc}")
    request = f"{check.method} {path}"
    started = time.perf_counter()
    try:
        response = client.request(check.method, str(path), params=query or None, headers=headers or None,
                                  json=body, data=form, timeout=check.budget_seconds or httpx.USE_CLIENT_DEFAULT)
    except httpx.TimeoutException:
        limit = f"its budget of {check.budget_seconds:g} s" if check.budget_seconds else "the health timeout"
        return PathResult(check.name, False, None, _ms(started), f"{request} did not answer within {limit}")
    except httpx.HTTPError as exc:
        return PathResult(check.name, False, None, _ms(started), f"{request} did not answer ({type(exc).__name__})")
    elapsed = _ms(started)
    try:
        answer = response.json()
    except ValueError:
        answer = None
    if response.status_code != check.expect_status:
        return PathResult(check.name, False, response.status_code, elapsed,
                          f"{request} answered HTTP {response.status_code}, expected {check.expect_status}: "
                          f"{response.text[:160]}")
    missing = [k for k in check.expect_keys if not isinstance(answer, dict) or k not in answer]
    if missing:
        return PathResult(check.name, False, response.status_code, elapsed, f"{request} answer lacks {', '.join(missing)}")
    try:  # an expected value may be a template too: the id an earlier check created, say
        expected = [e.model_copy(update={name: fill(getattr(e, name), answers, secrets) for name in e.model_fields_set
                                         if name != "at"}) for e in check.expect]
    except LookupError as exc:
        return PathResult(check.name, False, response.status_code, elapsed, f"{request}: {exc}")
    problems = [problem for problem in (unmet(e, answer) for e in expected) if problem is not None]
    if problems:
        return PathResult(check.name, False, response.status_code, elapsed, f"{request}: {'; '.join(problems)}")
    if check.budget_seconds is not None and elapsed > check.budget_seconds * 1000:
        return PathResult(check.name, False, response.status_code, elapsed,
                          f"{request} took {elapsed / 1000:.2f} s, over its budget of {check.budget_seconds:g} s")
    answers[check.name] = answer
    return PathResult(check.name, True, response.status_code, elapsed, f"{request} HTTP {response.status_code} in {elapsed:.0f} ms")


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 1)


@dataclass(frozen=True)
class SmokeReport:
    results: list[PathResult]

    def describe(self) -> str:
        if not self.results:
            return "not checked: no [[critical_paths]] in the environment file"
        return "; ".join(f"{r.name}: {'ok' if r.ok else 'FAILED'} ({r.detail})" for r in self.results)


@read_step("run-critical-path-tests", retries=0)
def run_critical_path_tests(config: EnvironmentConfig) -> SmokeReport:
    """Runbook step 8: job scraping, AI analysis, document generation, email integration."""
    secrets = {check.name: check_secrets(config, check) for check in config.critical_paths}
    results = run_checks(config.service.base_url, config.critical_paths, config.health.timeout_seconds,
                         secrets=secrets)
    failed = [r for r in results if not r.ok]
    if failed:
        raise HealthCheckFailed(f"run critical path tests ({config.name})",
                                "; ".join(f"{r.name}: {r.detail}" for r in failed),
                                "the release breaks a critical path; it will be rolled back")
    return SmokeReport(results)
