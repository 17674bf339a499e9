from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from alembic import command
from alembic.config import Config
from fastapi.testclient import TestClient
from jobapp.scraper import load_source, store_jobs
from jobapp.settings import Settings
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool


def test_a_posting_is_matched_whatever_the_case_of_its_url(client: TestClient, settings: Settings) -> None:
    first = client.post("/api/scrape", json={"source": "sample"}).json()
    shouted = [replace(job, link=job.link.upper()) for job in load_source("sample")]
    engine = create_engine(settings.database_url, poolclass=NullPool)
    with Session(engine) as session:
        result = store_jobs(session, shouted)
        session.commit()
    engine.dispose()
    assert result.new == 0
    assert result.job_ids == first["job_ids"]
    jobs = client.get("/api/jobs").json()
    assert jobs["total"] == 10
    assert all(job["canonical_url"] == job["source_url"].lower() for job in jobs["jobs"])


def test_features_list_canonical_dedupe(client: TestClient) -> None:
    assert "canonical-dedupe" in client.get("/api/features").json()


def test_0003_fills_a_unique_canonical_url(
    database_url: str, migrate: Callable[..., None], make_alembic_config: Callable[[str], Config]
) -> None:
    engine = create_engine(database_url, poolclass=NullPool)
    migrate(database_url, "0002")
    with engine.begin() as connection:
        for number, url in enumerate(["https://Example.com/Jobs/1", "https://example.com/jobs/2"]):
            connection.execute(
                text(
                    "INSERT INTO jobs (source_url, title, company, location, description, created_at) "
                    "VALUES (:url, :title, 'Acme', 'Remote', 'Python', '2024-01-01 00:00:00')"
                ),
                {"url": url, "title": f"Job {number}"},
            )
    migrate(database_url, "0003")
    with engine.connect() as connection:
        rows = connection.execute(text("SELECT source_url, canonical_url FROM jobs ORDER BY id")).all()
    assert [canonical for _, canonical in rows] == [
        "https://example.com/jobs/1",
        "https://example.com/jobs/2",
    ]
    unique = {index["name"]: index["unique"] for index in inspect(engine).get_indexes("jobs")}
    assert unique.get("ux_jobs_canonical_url") in (True, 1)
    command.downgrade(make_alembic_config(database_url), "0002")
    assert "canonical_url" not in {column["name"] for column in inspect(engine).get_columns("jobs")}
    engine.dispose()
