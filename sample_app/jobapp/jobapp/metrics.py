"""Prometheus metrics.

Under gunicorn every worker writes its counters to files in ``PROMETHEUS_MULTIPROC_DIR``
(set by gunicorn.conf.py) and a scrape of any worker sums all of them. Without that variable,
as under TestClient, the metrics live in this process's default registry.
"""

from __future__ import annotations

import logging
import struct
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from jobapp.activity import count_active_users

UNMATCHED_ROUTE = "<unmatched>"

REQUESTS = Counter("jobapp_http_requests_total", "HTTP requests answered.", ["route", "method", "status"])
REQUEST_DURATION = Histogram(
    "jobapp_http_request_duration_seconds",
    "Time to answer an HTTP request.",
    ["route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)

log = logging.getLogger(__name__)


def route_template(routes: Sequence[BaseRoute], scope: Scope) -> str:
    """The path template of the matching route: raw paths would make one series per job id."""
    partial = UNMATCHED_ROUTE
    for route in routes:
        path = getattr(route, "path", None)
        if path is None:
            continue
        match, _ = route.matches(scope)
        if match is Match.FULL:
            return str(path)
        if match is Match.PARTIAL and partial == UNMATCHED_ROUTE:
            partial = str(path)
    return partial


class MetricsMiddleware:
    def __init__(self, app: ASGIApp, routes: Sequence[BaseRoute]) -> None:
        self.app = app
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route = route_template(self.routes, scope)
        # An exception escaping the app becomes a 500 further out, so count it as one.
        status = 500
        started = time.perf_counter()

        async def send_and_record_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_record_status)
        finally:
            REQUESTS.labels(route=route, method=scope["method"], status=str(status)).inc()
            REQUEST_DURATION.labels(route=route).observe(time.perf_counter() - started)


class AppStateCollector(Collector):
    """Metrics computed at scrape time rather than counted per request."""

    def __init__(self, version: str, environment: str, sessions: sessionmaker[Session]) -> None:
        self.version = version
        self.environment = environment
        self.sessions = sessions

    def collect(self) -> Iterator[Metric]:
        build = GaugeMetricFamily(
            "jobapp_build_info",
            "The commit and environment this worker serves.",
            labels=["version", "environment"],
        )
        build.add_metric([self.version, self.environment], 1)
        yield build
        try:
            with self.sessions() as session:
                active = count_active_users(session)
        except SQLAlchemyError:
            # A scrape must still deliver the request metrics when the database is down.
            log.warning("could not count active users", exc_info=True)
            return
        yield GaugeMetricFamily(
            "jobapp_active_users", "Distinct users with activity in the last 5 minutes.", value=active
        )


def exposition(metrics_dir: Path | None, app_registry: CollectorRegistry) -> bytes:
    if metrics_dir is None:
        return generate_latest(REGISTRY) + generate_latest(app_registry)
    base = CollectorRegistry()
    MultiProcessCollector(base, path=str(metrics_dir))  # type: ignore[no-untyped-call]
    for attempt in range(3):
        try:
            return generate_latest(base) + generate_latest(app_registry)
        except struct.error:
            # A worker that is just starting has created its file but not yet sized it.
            if attempt == 2:
                raise
            time.sleep(0.01)
    raise AssertionError("unreachable")
