from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from jobapp.maintenance import disable, enable
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.slow


# No keep-alive: a fresh connection per request lets the kernel spread requests over both workers.
HTTP = httpx.Client(timeout=10, limits=httpx.Limits(max_keepalive_connections=0))


def get(url: str) -> httpx.Response:
    return HTTP.get(url)


def health_requests(metrics: Iterable[Metric]) -> float:
    return sum(
        sample.value
        for family in metrics
        for sample in family.samples
        if sample.name == "jobapp_http_requests_total" and sample.labels["route"] == "/health"
    )


def per_worker_health_requests(data_dir: Path) -> list[float]:
    """What each worker counted, read from its own file rather than through /metrics."""
    # A worker that is just starting has created its file but not sized it yet: nothing counted.
    files = sorted(p for p in (data_dir / "prometheus").glob("counter_*.db") if p.stat().st_size > 0)
    return [health_requests(read_worker_file(path)) for path in files]


def read_worker_file(path: Path) -> Iterable[Metric]:
    metrics: Iterable[Metric] = MultiProcessCollector.merge([str(path)])  # type: ignore[no-untyped-call]
    return metrics


def test_two_workers_serve_and_metrics_sum_over_both(gunicorn_server: Any) -> None:
    base = gunicorn_server.base_url
    with ThreadPoolExecutor(max_workers=8) as pool:
        for _ in range(50):
            responses = list(pool.map(get, [f"{base}/health"] * 40))
            assert all(response.status_code == 200 for response in responses)
            counts = per_worker_health_requests(gunicorn_server.data_dir)
            if len(counts) == 2 and all(counts):
                break
    # A worker counts a request just after answering it, so read until both views agree.
    deadline = time.monotonic() + 5
    while True:
        by_worker = per_worker_health_requests(gunicorn_server.data_dir)
        scraped = health_requests(text_string_to_metric_families(get(f"{base}/metrics").text))
        if scraped == sum(by_worker) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert len(by_worker) == 2 and all(count > 0 for count in by_worker), by_worker
    assert scraped == sum(by_worker)


def test_maintenance_applies_to_every_worker(gunicorn_server: Any) -> None:
    base = gunicorn_server.base_url
    flag = gunicorn_server.data_dir / "maintenance"
    enable(flag, 9)
    try:
        with ThreadPoolExecutor(max_workers=8) as pool:
            refused = list(pool.map(get, [f"{base}/api/jobs"] * 40))
        assert {(r.status_code, r.headers.get("Retry-After")) for r in refused} == {(503, "9")}
        health = get(f"{base}/api/health")
        assert health.status_code == 503 and health.json()["status"] == "maintenance"
        assert get(f"{base}/metrics").status_code == 200
    finally:
        disable(flag)
    with ThreadPoolExecutor(max_workers=8) as pool:
        served = list(pool.map(get, [f"{base}/api/jobs"] * 40))
    assert {r.status_code for r in served} == {200}


def test_hup_replaces_workers_and_keeps_serving(own_gunicorn_server: Any) -> None:
    base = own_gunicorn_server.base_url
    before = worker_pids(own_gunicorn_server.master_pid)
    assert len(before) == 2
    os.kill(own_gunicorn_server.master_pid, signal.SIGHUP)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        after = worker_pids(own_gunicorn_server.master_pid)
        if len(after) == 2 and not after & before:
            break
        time.sleep(0.1)
    assert len(after) == 2 and not after & before
    assert get(f"{base}/api/health").status_code == 200


def worker_pids(master_pid: int) -> set[int]:
    children = Path(f"/proc/{master_pid}/task/{master_pid}/children").read_text().split()
    return {int(pid) for pid in children}
