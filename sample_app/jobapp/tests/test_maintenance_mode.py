from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from subprocess import CompletedProcess

from fastapi.testclient import TestClient
from jobapp.maintenance import DEFAULT_RETRY_AFTER, enable, retry_after
from jobapp.settings import Settings

RunModule = Callable[..., CompletedProcess[str]]


def test_every_route_answers_503_with_retry_after(client: TestClient, settings: Settings) -> None:
    enable(settings.maintenance_file, 42)
    for method, path in [
        ("GET", "/"),
        ("GET", "/health"),
        ("GET", "/api/jobs"),
        ("POST", "/api/scrape"),
        ("POST", "/api/email"),
        ("GET", "/no/such/page"),
    ]:
        response = client.request(method, path, json={})
        assert response.status_code == 503, (method, path)
        assert response.headers["Retry-After"] == "42"


def test_health_reports_maintenance_with_services(client: TestClient, settings: Settings) -> None:
    enable(settings.maintenance_file, 42)
    response = client.get("/api/health")
    body = response.json()
    assert response.status_code == 503
    assert body["status"] == "maintenance"
    assert body["maintenance"] is True
    assert body["version"]
    assert all(service["status"] == "ok" for service in body["services"].values())


def test_metrics_stay_reachable_and_count_refusals(client: TestClient, settings: Settings) -> None:
    enable(settings.maintenance_file)
    assert client.get("/api/jobs").status_code == 503
    response = client.get("/metrics")
    assert response.status_code == 200
    assert 'jobapp_http_requests_total{method="GET",route="/api/jobs",status="503"}' in response.text


def test_switching_off_restores_service_at_once(client: TestClient, settings: Settings) -> None:
    enable(settings.maintenance_file)
    assert client.get("/api/jobs").status_code == 503
    settings.maintenance_file.unlink()
    assert client.get("/api/jobs").status_code == 200
    assert client.get("/api/health").json()["status"] == "ok"


def test_flag_content_sets_retry_after(tmp_path: Path) -> None:
    flag = tmp_path / "maintenance"
    assert retry_after(flag) is None
    flag.write_text("")
    assert retry_after(flag) == DEFAULT_RETRY_AFTER
    flag.write_text("soon")
    assert retry_after(flag) == DEFAULT_RETRY_AFTER
    flag.write_text(" 7\n")
    assert retry_after(flag) == 7


def test_command_line_switch(tmp_path: Path, run_module: RunModule) -> None:
    env = {"JOBAPP_DATA_DIR": str(tmp_path)}
    on = run_module("jobapp.maintenance", "on", "--retry-after", "12", env=env)
    assert on.returncode == 0, on.stderr
    assert retry_after(tmp_path / "maintenance") == 12
    off = run_module("jobapp.maintenance", "off", env=env)
    assert off.returncode == 0, off.stderr
    assert not (tmp_path / "maintenance").exists()
    assert run_module("jobapp.maintenance", "maybe", env=env).returncode == 2
