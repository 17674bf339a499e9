"""The dependency probes behind /api/health."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Literal

from jobapp import maintenance
from jobapp.analysis import check_canary
from jobapp.db import database_revision
from jobapp.mailer import check_outbox
from jobapp.runtime import Runtime
from jobapp.scraper import load_source

SERVICES = ("database", "scraper", "ai", "documents", "email")


@dataclass(frozen=True)
class ServiceStatus:
    status: Literal["ok", "error"]
    detail: str
    latency_ms: float


def probe(check: Callable[[], str]) -> ServiceStatus:
    started = time.perf_counter()
    try:
        detail = check()
    # A probe's job is to report any failure of its dependency, whatever its type.
    except Exception as error:  # noqa: BLE001
        return ServiceStatus("error", f"{type(error).__name__}: {_first_line(error)}", _since(started))
    return ServiceStatus("ok", detail, _since(started))


def _first_line(error: Exception) -> str:
    # Database errors append the statement and a documentation link; the first line is the cause.
    lines = str(error).strip().splitlines()
    return lines[0][:300] if lines else ""


def _since(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)


def health_report(runtime: Runtime) -> tuple[int, dict[str, Any]]:
    """The HTTP status and body of /api/health."""
    database_rev: str | None = None

    def check_database() -> str:
        nonlocal database_rev
        database_rev = database_revision(runtime.engine)
        return f"SELECT 1 ok; schema at revision {database_rev}"

    def check_scraper() -> str:
        return f"sample page parsed: {len(load_source('sample'))} jobs"

    def check_documents() -> str:
        with runtime.sessions() as session:
            return runtime.letters.check(session)

    def check_email() -> str:
        with runtime.sessions() as session:
            return check_outbox(session)

    checks: dict[str, Callable[[], str]] = {
        "database": check_database,
        "scraper": check_scraper,
        "ai": lambda: check_canary(runtime.scorer),
        "documents": check_documents,
        "email": check_email,
    }
    services = {name: probe(checks[name]) for name in SERVICES}
    in_maintenance = maintenance.retry_after(runtime.settings.maintenance_file) is not None
    healthy = all(service.status == "ok" for service in services.values())
    if in_maintenance:
        status = "maintenance"
    else:
        status = "ok" if healthy else "degraded"
    body = {
        "status": status,
        "version": runtime.version,
        "environment": runtime.settings.environment,
        "maintenance": in_maintenance,
        "database_revision": database_rev,
        "expected_revision": runtime.expected_revision,
        # Reported, not judged: during a deploy the old code runs on the new schema for a while.
        "revision_matches": database_rev == runtime.expected_revision,
        "services": {name: asdict(service) for name, service in services.items()},
    }
    return (200 if status == "ok" else 503), body
