from __future__ import annotations

import hashlib

from fastapi.testclient import TestClient
from jobapp.analysis import MODEL
from jobapp.db import APP_DIR
from jobapp.models import Application, Document, OutboxMessage
from jobapp.settings import Settings
from jobapp.version import git_version
from sqlalchemy import create_engine, func, select
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool


def count(settings: Settings, model: type) -> int:
    engine = create_engine(settings.database_url, poolclass=NullPool)
    with Session(engine) as session:
        total = session.scalar(select(func.count()).select_from(model)) or 0
    engine.dispose()
    return total


def scrape(client: TestClient) -> list[int]:
    response = client.post("/api/scrape", json={"source": "sample"})
    assert response.status_code == 200, response.text
    job_ids: list[int] = response.json()["job_ids"]
    return job_ids


def test_scrape_inserts_then_updates(client: TestClient) -> None:
    first = client.post("/api/scrape", json={"source": "sample"}).json()
    second = client.post("/api/scrape", json={"source": "sample"}).json()
    assert first["scraped"] == 10 and first["new"] == 10
    assert second == {"scraped": 10, "new": 0, "job_ids": first["job_ids"]}
    jobs = client.get("/api/jobs").json()
    assert jobs["total"] == 10
    assert [job["id"] for job in jobs["jobs"]] == first["job_ids"]
    assert all(job["company"] and job["source_url"].startswith("https://") for job in jobs["jobs"])


def test_scrape_rejects_unknown_source(client: TestClient) -> None:
    assert client.post("/api/scrape", json={"source": "linkedin"}).status_code == 422


def test_jobs_are_paged(client: TestClient) -> None:
    job_ids = scrape(client)
    page = client.get("/api/jobs", params={"limit": 3, "offset": 2}).json()
    assert page["total"] == 10
    assert [job["id"] for job in page["jobs"]] == job_ids[2:5]
    assert client.get("/api/jobs", params={"limit": 0}).status_code == 422


def test_analyze_job_records_an_application(client: TestClient, settings: Settings) -> None:
    job_id = scrape(client)[0]
    response = client.post("/api/analyze", json={"job_id": job_id, "profile": "Python PostgreSQL Haskell"})
    body = response.json()
    assert response.status_code == 200, body
    assert body["model"] == MODEL
    assert body["matched"] == ["python", "postgresql"]
    assert body["score"] == 67
    assert body["application_id"] is not None
    assert count(settings, Application) == 1


def test_analyze_text_is_deterministic_and_stores_nothing(client: TestClient, settings: Settings) -> None:
    request = {"text": "We use Go, Kubernetes and Terraform.", "profile": "kubernetes terraform python go"}
    answers = [client.post("/api/analyze", json=request).json() for _ in range(3)]
    assert answers[0] == answers[1] == answers[2]
    assert answers[0]["score"] == 75
    assert answers[0]["matched"] == ["kubernetes", "terraform", "go"]
    assert answers[0]["application_id"] is None
    assert count(settings, Application) == 0


def test_analyze_needs_exactly_one_subject(client: TestClient) -> None:
    assert client.post("/api/analyze", json={"profile": "python"}).status_code == 422
    assert (
        client.post("/api/analyze", json={"job_id": 1, "text": "x", "profile": "python"}).status_code == 422
    )
    assert client.post("/api/analyze", json={"text": "x", "profile": ""}).status_code == 422


def test_analyze_unknown_job_is_404(client: TestClient) -> None:
    assert client.post("/api/analyze", json={"job_id": 999, "profile": "python"}).status_code == 404


def test_cover_letter_is_written_recorded_and_readable(client: TestClient, settings: Settings) -> None:
    job_id = scrape(client)[1]
    response = client.post(
        "/api/documents/cover-letter", json={"job_id": job_id, "applicant": "Ada Lovelace"}
    )
    body = response.json()
    assert response.status_code == 200, body
    files = list(settings.documents_dir.glob("*.txt"))
    assert len(files) == 1
    payload = files[0].read_bytes()
    assert body["bytes"] == len(payload)
    assert body["sha256"] == hashlib.sha256(payload).hexdigest()
    letter = client.get(f"/api/documents/{body['document_id']}")
    assert letter.status_code == 200
    assert letter.headers["content-type"].startswith("text/plain")
    assert letter.content == payload
    assert "Ada Lovelace" in letter.text and "Contoso Logistics" in letter.text
    assert count(settings, Document) == 1


def test_cover_letter_for_unknown_job_is_404(client: TestClient, settings: Settings) -> None:
    response = client.post("/api/documents/cover-letter", json={"job_id": 424242, "applicant": "Ada"})
    assert response.status_code == 404
    assert not settings.documents_dir.exists() or not any(settings.documents_dir.iterdir())


def test_unknown_document_is_404(client: TestClient) -> None:
    assert client.get("/api/documents/31337").status_code == 404


def test_email_is_queued_in_the_outbox(client: TestClient, settings: Settings) -> None:
    request = {"to": "hiring@contoso.example", "subject": "Application", "body": "Hello!"}
    response = client.post("/api/email", json=request)
    body = response.json()
    assert response.status_code == 200, body
    assert body["status"] == "queued"
    stored = client.get(f"/api/outbox/{body['id']}").json()
    assert stored["to"] == request["to"] and stored["subject"] == request["subject"]
    assert stored["body"] == request["body"] and stored["status"] == "queued"
    assert count(settings, OutboxMessage) == 1


def test_email_validates_the_recipient(client: TestClient) -> None:
    response = client.post("/api/email", json={"to": "not-an-address", "subject": "s", "body": "b"})
    assert response.status_code == 422
    assert client.get("/api/outbox/404").status_code == 404


def test_index_names_the_version(client: TestClient) -> None:
    response = client.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert git_version(APP_DIR) in response.text
