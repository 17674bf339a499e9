from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient
from jobapp.app import create_app
from jobapp.db import APP_DIR, expected_revision
from jobapp.health import SERVICES
from jobapp.settings import Settings
from jobapp.version import git_version
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool


def test_liveness_needs_no_database(tmp_path: Path) -> None:
    settings = Settings(
        database_url=f"sqlite:///{tmp_path / 'missing' / 'never-created.db'}",
        environment="development",
        data_dir=tmp_path / "data",
    )
    with TestClient(create_app(settings)) as client:
        response = client.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_all_services_ok(client: TestClient) -> None:
    response = client.get("/api/health")
    body = response.json()
    assert response.status_code == 200, body
    assert body["status"] == "ok"
    assert body["maintenance"] is False
    assert body["environment"] == "development"
    assert body["version"] == git_version(APP_DIR)
    assert body["database_revision"] == expected_revision() == body["expected_revision"]
    assert body["revision_matches"] is True
    assert list(body["services"]) == list(SERVICES)
    for name, service in body["services"].items():
        assert service["status"] == "ok", (name, service)
        assert service["detail"]
        assert service["latency_ms"] >= 0


def test_revision_mismatch_is_reported_not_failed(client: TestClient, migrated_url: str) -> None:
    engine = create_engine(migrated_url, poolclass=NullPool)
    with engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    engine.dispose()
    response = client.get("/api/health")
    body = response.json()
    assert response.status_code == 200
    assert body["database_revision"] == "9999"
    assert body["expected_revision"] == expected_revision()
    assert body["revision_matches"] is False


def test_unmigrated_database_is_degraded(database_url: str, tmp_path: Path) -> None:
    settings = Settings(database_url=database_url, environment="staging", data_dir=tmp_path / "data")
    with TestClient(create_app(settings)) as client:
        response = client.get("/api/health")
    body = response.json()
    assert response.status_code == 503
    assert body["status"] == "degraded"
    assert body["database_revision"] is None
    assert body["services"]["database"]["status"] == "ok"
    assert body["services"]["email"]["status"] == "error"
    assert "outbox" in body["services"]["email"]["detail"]


def test_unwritable_documents_dir_is_degraded(settings: Settings) -> None:
    settings.data_dir.mkdir(parents=True)
    # A file where the directory should be: no document can be written there.
    settings.documents_dir.write_text("not a directory")
    with TestClient(create_app(settings)) as client:
        response = client.get("/api/health")
    body = response.json()
    assert response.status_code == 503
    assert body["status"] == "degraded"
    assert body["services"]["documents"]["status"] == "error"
    assert {name for name, s in body["services"].items() if s["status"] == "error"} == {"documents"}


def test_unreachable_database_is_degraded(tmp_path: Path) -> None:
    settings = Settings(
        database_url="postgresql+psycopg://nobody@127.0.0.1:1/none?connect_timeout=2",
        environment="production",
        data_dir=tmp_path / "data",
    )
    with TestClient(create_app(settings)) as client:
        response = client.get("/api/health")
    body = response.json()
    assert response.status_code == 503
    assert body["services"]["database"]["status"] == "error"
    assert body["services"]["scraper"]["status"] == "ok"
    assert body["services"]["ai"]["status"] == "ok"
    assert body["database_revision"] is None
