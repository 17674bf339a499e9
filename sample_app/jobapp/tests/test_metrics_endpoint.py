from __future__ import annotations

from datetime import timedelta

from fastapi.testclient import TestClient
from jobapp.activity import ActivityRecorder
from jobapp.db import make_session_factory
from jobapp.models import UserSession, utcnow
from jobapp.settings import Settings
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool


def sample(client: TestClient, name: str, **labels: str) -> float:
    response = client.get("/metrics")
    assert response.status_code == 200
    for family in text_string_to_metric_families(response.text):
        for metric in family.samples:
            if metric.name == name and all(metric.labels.get(k) == v for k, v in labels.items()):
                return metric.value
    return 0.0


def test_requests_are_counted_by_route_template(client: TestClient) -> None:
    labels = {"route": "/api/outbox/{message_id}", "method": "GET", "status": "404"}
    before = sample(client, "jobapp_http_requests_total", **labels)
    for message_id in (101, 102, 103):
        assert client.get(f"/api/outbox/{message_id}").status_code == 404
    assert sample(client, "jobapp_http_requests_total", **labels) == before + 3
    assert sample(client, "jobapp_http_requests_total", route="/api/outbox/101") == 0


def test_unknown_paths_share_one_series(client: TestClient) -> None:
    labels = {"route": "<unmatched>", "method": "GET", "status": "404"}
    before = sample(client, "jobapp_http_requests_total", **labels)
    client.get("/no/such/page")
    client.get("/another/missing/page")
    assert sample(client, "jobapp_http_requests_total", **labels) == before + 2


def test_durations_land_in_the_histogram(client: TestClient) -> None:
    before = sample(client, "jobapp_http_request_duration_seconds_count", route="/health")
    client.get("/health")
    client.get("/health")
    assert sample(client, "jobapp_http_request_duration_seconds_count", route="/health") == before + 2
    assert sample(client, "jobapp_http_request_duration_seconds_bucket", route="/health", le="5.0") >= 2


def test_build_info_names_version_and_environment(client: TestClient) -> None:
    version = client.get("/api/health").json()["version"]
    assert sample(client, "jobapp_build_info", version=version, environment="development") == 1


def test_active_users_come_from_recent_sessions(client: TestClient, settings: Settings) -> None:
    engine = create_engine(settings.database_url, poolclass=NullPool)
    with Session(engine) as session, session.begin():
        session.add(UserSession(user_id="gone-for-lunch", last_seen=utcnow() - timedelta(minutes=30)))
    engine.dispose()
    assert sample(client, "jobapp_active_users") == 0
    for user in ("ada", "grace", "ada", "linus"):
        assert client.get("/api/jobs", headers={"X-User-Id": user}).status_code == 200
    assert sample(client, "jobapp_active_users") == 3


def test_activity_is_written_at_most_once_a_minute(settings: Settings) -> None:
    engine = create_engine(settings.database_url, poolclass=NullPool)
    now = [1000.0]
    recorder = ActivityRecorder(make_session_factory(engine), clock=lambda: now[0])

    def last_seen() -> object:
        with Session(engine) as session:
            return session.scalar(select(UserSession.last_seen).where(UserSession.user_id == "ada"))

    assert recorder.record("ada") is True
    first = last_seen()
    now[0] += 59
    assert recorder.record("ada") is False
    assert last_seen() == first
    now[0] += 2
    assert recorder.record("ada") is True
    assert last_seen() != first
    engine.dispose()
