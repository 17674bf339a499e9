"""Health of the app: `/health` (liveness) and `/api/health` (services and the SHA it serves).

Redirects are never followed: a health endpoint that answers 3xx is misconfigured, so unhealthy.
Every request has a total deadline, so an endpoint that accepts and never answers costs at most
`timeout_seconds`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import httpx


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
    try:
        with httpx.Client(timeout=timeout, follow_redirects=False, transport=transport) as client:
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
