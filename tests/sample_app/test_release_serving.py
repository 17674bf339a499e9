"""A release checkout served by gunicorn: two workers, shared metrics and maintenance, HUP reloads."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from prometheus_client.metrics_core import Metric
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


def requests_counted(families: Iterable[Metric], route: str) -> float:
    return sum(
        sample.value
        for family in families
        for sample in family.samples
        if sample.name == "jobapp_http_requests_total" and sample.labels["route"] == route
    )


def read_worker_file(path: Path) -> Iterable[Metric]:
    metrics: Iterable[Metric] = MultiProcessCollector.merge([str(path)])  # type: ignore[no-untyped-call]
    return metrics


def test_metrics_sum_over_both_workers(served_v1: tuple[Checkout, Server]) -> None:
    checkout, server = served_v1
    metrics_dir = checkout.data_dir / "prometheus"

    def per_worker() -> list[float]:
        files = sorted(metrics_dir.glob("counter_*.db"))
        return [requests_counted(read_worker_file(path), "/api/jobs") for path in files]

    sent = 0
    with ThreadPoolExecutor(max_workers=8) as pool:
        for _ in range(50):
            assert {r.status_code for r in pool.map(server.get, ["/api/jobs"] * 40)} == {200}
            sent += 40
            if len([count for count in per_worker() if count]) == 2:
                break
    # A worker counts a request just after answering it, so the last counts may trail a little.
    server.wait_until(lambda: sum(per_worker()) == sent, f"the workers' files did not add up to {sent}", 5)
    counts = per_worker()
    assert len(counts) == 2 and all(counts), counts
    scraped = text_string_to_metric_families(server.get("/metrics").text)
    assert requests_counted(scraped, "/api/jobs") == sent


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
    server.wait_until(
        lambda: server.get("/api/health").json()["version"] == v2, "v2 was not served", seconds=15
    )
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
    assert (jobs["Backend Engineer"]["salary_min"], jobs["Backend Engineer"]["salary_max"]) == (
        95_000,
        120_000,
    )
    build_info = text_string_to_metric_families(server.get("/metrics").text)
    versions = {
        sample.labels["version"]
        for family in build_info
        for sample in family.samples
        if sample.name == "jobapp_build_info"
    }
    assert versions == {v2}


def test_usr2_hands_over_to_a_master_running_the_new_release(
    make_checkout: MakeCheckout, tmp_path: Path
) -> None:
    checkout = make_checkout("v1", f"sqlite:///{tmp_path / 'handoff.db'}")
    checkout.upgrade()
    server = start_gunicorn(checkout, tmp_path / "run")
    new_master: int | None = None
    try:
        v1 = checkout.head()
        for _ in range(10):
            assert server.get("/health").status_code == 200
        checkout.switch("v2")
        checkout.upgrade()
        v2 = checkout.head()
        os.kill(server.master_pid, signal.SIGUSR2)
        second_pid_file = tmp_path / "run" / "gunicorn.pid.2"
        server.wait_until(second_pid_file.exists, "the new master wrote no pid file")
        new_master = int(second_pid_file.read_text())
        # Both masters accept on the same socket until the old one is told to leave.
        server.wait_until(
            lambda: {server.get("/api/health").json()["version"] for _ in range(20)} == {v1, v2},
            "both releases did not answer during the handoff",
        )
        server.stop()
        assert {server.get("/api/health").json()["version"] for _ in range(20)} == {v2}
        counted = {
            sample.labels["status"]: sample.value
            for family in text_string_to_metric_families(server.get("/metrics").text)
            for sample in family.samples
            if sample.name == "jobapp_http_requests_total" and sample.labels["route"] == "/health"
        }
        # The old workers' counts survive the handoff: only a cold start clears the metrics.
        assert counted["200"] >= 10
        assert "Traceback" not in server.log_file.read_text()
    finally:
        server.stop()
        if new_master is not None:
            stop_pid(new_master)


def stop_pid(pid: int) -> None:
    os.kill(pid, signal.SIGTERM)
    for _ in range(150):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)
