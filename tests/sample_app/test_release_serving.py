"""A release checkout served by gunicorn: two workers, shared metrics and maintenance, HUP reloads."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from .checkouts import Checkout, MakeCheckout, Server, start_gunicorn

pytestmark = pytest.mark.slow


@pytest.fixture
def served_v1(make_checkout: MakeCheckout, tmp_path: Path) -> Iterator[tuple[Checkout, Server]]:
    checkout = make_checkout("v1", f"sqlite:///{tmp_path / 'served.db'}")
    checkout.upgrade()
    checkout.seed("staging")
    server = start_gunicorn(checkout, tmp_path / "run")
    try:
        yield checkout, server
    finally:
        server.stop()


def requests_counted(samples: object, route: str) -> float:
    return sum(
        sample.value
        for family in samples  # type: ignore[attr-defined]
        for sample in family.samples
        if sample.name == "jobapp_http_requests_total" and sample.labels["route"] == route
    )


def test_metrics_sum_over_both_workers(served_v1: tuple[Checkout, Server]) -> None:
    checkout, server = served_v1
    metrics_dir = checkout.data_dir / "prometheus"

    def per_worker() -> list[float]:
        files = sorted(metrics_dir.glob("counter_*.db"))
        return [requests_counted(MultiProcessCollector.merge([str(path)]), "/api/jobs") for path in files]

    with ThreadPoolExecutor(max_workers=8) as pool:
        for _ in range(50):
            assert {r.status_code for r in pool.map(server.get, ["/api/jobs"] * 40)} == {200}
            if len([count for count in per_worker() if count]) == 2:
                break
    counts = per_worker()
    assert len(counts) == 2 and all(counts), counts
    scraped = text_string_to_metric_families(server.get("/metrics").text)
    assert requests_counted(scraped, "/api/jobs") == sum(counts)


def test_maintenance_reaches_every_worker(served_v1: tuple[Checkout, Server]) -> None:
    checkout, server = served_v1
    switched_on = checkout.run("-m", "jobapp.maintenance", "on", "--retry-after", "17")
    assert switched_on.returncode == 0, switched_on.stderr
    with ThreadPoolExecutor(max_workers=8) as pool:
        refused = list(pool.map(server.get, ["/", "/api/jobs", "/health"] * 20))
    assert {(r.status_code, r.headers.get("Retry-After")) for r in refused} == {(503, "17")}
    health = server.get("/api/health")
    assert health.status_code == 503
    assert health.json()["status"] == "maintenance" and health.json()["version"] == checkout.head()
    assert server.get("/metrics").status_code == 200
    assert checkout.run("-m", "jobapp.maintenance", "off").returncode == 0
    with ThreadPoolExecutor(max_workers=8) as pool:
        served = list(pool.map(server.get, ["/api/jobs"] * 40))
    assert {r.status_code for r in served} == {200}


def test_hup_serves_the_checked_out_release(served_v1: tuple[Checkout, Server]) -> None:
    checkout, server = served_v1
    v1 = checkout.head()
    assert server.get("/api/health").json()["version"] == v1
    assert server.get("/api/features").status_code == 404
    old_workers = server.worker_pids()
    checkout.switch("v2")
    # Expand first: v1 keeps working on the v2 schema until the new workers take over.
    checkout.upgrade()
    assert server.get("/api/jobs").status_code == 200
    v2 = checkout.head()
    assert v2 != v1
    os.kill(server.master_pid, signal.SIGHUP)
    server.wait_until(lambda: server.get("/api/health").json()["version"] == v2, "v2 was not served", seconds=15)
    server.wait_until(lambda: not server.worker_pids() & old_workers, "old workers did not exit", seconds=15)
    assert len(server.worker_pids()) == 2
    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(server.get, ["/api/features"] * 20))
    assert {r.status_code for r in answers} == {200}
    assert {tuple(r.json()) for r in answers} == {("salary-insights",)}
    health = server.get("/api/health").json()
    assert health["status"] == "ok" and health["database_revision"] == health["expected_revision"] == "0002"
    scraped = httpx.post(f"{server.base_url}/api/scrape", json={"source": "sample"}, timeout=10)
    assert scraped.status_code == 200
    jobs = {job["title"]: job for job in server.get("/api/jobs?limit=500").json()["jobs"]}
    assert (jobs["Backend Engineer"]["salary_min"], jobs["Backend Engineer"]["salary_max"]) == (95_000, 120_000)
    build_info = text_string_to_metric_families(server.get("/metrics").text)
    versions = {
        sample.labels["version"] for family in build_info for sample in family.samples
        if sample.name == "jobapp_build_info"
    }
    assert versions == {v2}
