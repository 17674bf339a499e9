"""Critical-path tests: each configured check is one HTTP call whose answer must have a status and keys.

A check's body may take a value from an earlier check's answer: `"{{ job-scraping.job_ids.0 }}"`
is the first element of `job_ids` in the answer of the check named `job-scraping`.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

import httpx

from deployments.config import CriticalPathCheck, EnvironmentConfig
from deployments.errors import HealthCheckFailed
from tasks.steps import read_step

REFERENCE = re.compile(r"^\{\{\s*([a-z0-9-]+)\.([A-Za-z0-9_.]+)\s*\}\}$")


@dataclass(frozen=True)
class PathResult:
    name: str
    ok: bool
    status_code: int | None
    elapsed_ms: float
    detail: str


def fill(value: Any, answers: dict[str, Any]) -> Any:
    """`value` with every `{{ check.key.path }}` replaced from earlier answers."""
    if isinstance(value, dict):
        return {k: fill(v, answers) for k, v in value.items()}
    if isinstance(value, list):
        return [fill(v, answers) for v in value]
    if isinstance(value, str) and (match := REFERENCE.match(value)):
        current: Any = answers.get(match[1])
        for part in match[2].split("."):
            if isinstance(current, list) and part.isdigit() and int(part) < len(current):
                current = current[int(part)]
            elif isinstance(current, dict) and part in current:
                current = current[part]
            else:
                raise LookupError(f"{value} has no value (check {match[1]!r} answered {answers.get(match[1])!r:.120})")
        return current
    return value


def run_checks(base_url: str, checks: list[CriticalPathCheck], timeout: float,
               transport: httpx.BaseTransport | None = None) -> list[PathResult]:
    """Run every check in order; a check whose input depends on a failed one fails too, saying so."""
    answers: dict[str, Any] = {}
    results = []
    headers = {"X-User-Id": "release-check", "User-Agent": "deployctl-smoke"}
    with httpx.Client(base_url=base_url, timeout=timeout, follow_redirects=False, headers=headers,
                      transport=transport) as client:
        for check in checks:
            started = time.perf_counter()
            try:
                body = fill(check.json_body, answers) if check.json_body is not None else None
                response = client.request(check.method, check.path, json=body)
            except LookupError as exc:
                results.append(PathResult(check.name, False, None, 0.0, f"not run: {exc}"))
                continue
            except httpx.HTTPError as exc:
                results.append(PathResult(check.name, False, None, _ms(started),
                                          f"{check.method} {check.path} did not answer ({type(exc).__name__})"))
                continue
            elapsed = _ms(started)
            try:
                answer = response.json()
            except ValueError:
                answer = None
            missing = [k for k in check.expect_keys if not isinstance(answer, dict) or k not in answer]
            if response.status_code != check.expect_status:
                results.append(PathResult(check.name, False, response.status_code, elapsed,
                                          f"{check.method} {check.path} answered HTTP {response.status_code}, "
                                          f"expected {check.expect_status}: {response.text[:160]}"))
            elif missing:
                results.append(PathResult(check.name, False, response.status_code, elapsed,
                                          f"{check.method} {check.path} answer lacks {', '.join(missing)}"))
            else:
                answers[check.name] = answer
                results.append(PathResult(check.name, True, response.status_code, elapsed,
                                          f"{check.method} {check.path} HTTP {response.status_code} in {elapsed:.0f} ms"))
    return results


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
    results = run_checks(config.service.base_url, config.critical_paths, config.health.timeout_seconds)
    failed = [r for r in results if not r.ok]
    if failed:
        raise HealthCheckFailed(f"run critical path tests ({config.name})",
                                "; ".join(f"{r.name}: {r.detail}" for r in failed),
                                "the release breaks a critical path; it will be rolled back")
    return SmokeReport(results)
