from __future__ import annotations

from collections.abc import Callable

import pytest
from alembic import command
from alembic.config import Config
from fastapi.testclient import TestClient
from jobapp.scraper import parse_salary
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.pool import NullPool


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("€70,000 - €85,000 per year", (70_000, 85_000)),
        ("$95k - $120k", (95_000, 120_000)),
        ("CHF 130,000 - CHF 110,000", (110_000, 130_000)),
        ("€48,000", (48_000, 48_000)),
        ("$52.5k", (52_500, 52_500)),
        ("Competitive", (None, None)),
        ("", (None, None)),
    ],
)
def test_salary_ranges_are_parsed(text: str, expected: tuple[int | None, int | None]) -> None:
    assert parse_salary(text) == expected


def test_jobs_show_the_scraped_salary_range(client: TestClient) -> None:
    client.post("/api/scrape", json={"source": "sample"})
    jobs = {job["title"]: job for job in client.get("/api/jobs").json()["jobs"]}
    assert (jobs["Backend Engineer"]["salary_min"], jobs["Backend Engineer"]["salary_max"]) == (
        95_000,
        120_000,
    )
    assert jobs["Frontend Developer"]["salary_min"] is None
    assert jobs["Frontend Developer"]["salary_max"] is None


def test_features_and_index_announce_salary_insights(client: TestClient) -> None:
    assert "salary-insights" in client.get("/api/features").json()
    assert "salary insights" in client.get("/").text


def test_0002_adds_and_removes_the_salary_columns(
    database_url: str, migrate: Callable[..., None], make_alembic_config: Callable[[str], Config]
) -> None:
    engine = create_engine(database_url, poolclass=NullPool)
    migrate(database_url, "0001")
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO jobs (source_url, title, company, location, description, created_at) "
                "VALUES ('https://example.com/1', 'Dev', 'Acme', 'Remote', 'Python', '2024-01-01 00:00:00')"
            )
        )
    migrate(database_url, "0002")
    columns = {column["name"] for column in inspect(engine).get_columns("jobs")}
    assert {"salary_min", "salary_max"} <= columns
    assert "ix_jobs_company" in {index["name"] for index in inspect(engine).get_indexes("jobs")}
    command.downgrade(make_alembic_config(database_url), "0001")
    inspector = inspect(engine)
    assert not {"salary_min", "salary_max"} & {column["name"] for column in inspector.get_columns("jobs")}
    assert "ix_jobs_company" not in {index["name"] for index in inspector.get_indexes("jobs")}
    assert "ix_jobs_source_url" in {index["name"] for index in inspector.get_indexes("jobs")}
    with engine.connect() as connection:
        assert connection.execute(text("SELECT title FROM jobs")).scalars().all() == ["Dev"]
    engine.dispose()
