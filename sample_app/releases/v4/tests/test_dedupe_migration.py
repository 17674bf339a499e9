from __future__ import annotations

from collections.abc import Callable

from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import Engine
from sqlalchemy.pool import NullPool

JOB_INSERT = text(
    "INSERT INTO jobs (source_url, title, company, location, description, created_at) "
    "VALUES (:url, 'Dev', 'Acme', 'Remote', 'Python', '2024-01-01 00:00:00')"
)


def insert_jobs(engine: Engine, urls: list[str]) -> None:
    with engine.begin() as connection:
        for url in urls:
            connection.execute(JOB_INSERT, {"url": url})


def canonical_urls(engine: Engine) -> list[tuple[int, str]]:
    with engine.connect() as connection:
        return [
            tuple(row) for row in connection.execute(text("SELECT id, canonical_url FROM jobs ORDER BY id"))
        ]


def test_duplicates_are_marked_not_dropped(database_url: str, migrate: Callable[..., None]) -> None:
    engine = create_engine(database_url, poolclass=NullPool)
    migrate(database_url, "0002")
    insert_jobs(
        engine,
        ["https://example.com/a", "https://example.com/b", "https://Example.com/A", "https://example.com/a"],
    )
    migrate(database_url, "head")
    assert canonical_urls(engine) == [
        (1, "https://example.com/a"),
        (2, "https://example.com/b"),
        (3, "https://example.com/a#dup-3"),
        (4, "https://example.com/a#dup-4"),
    ]
    indexes = {index["name"]: index["unique"] for index in inspect(engine).get_indexes("jobs")}
    assert indexes["ux_jobs_canonical_url"] in (True, 1)
    engine.dispose()


def test_0003_completes_over_the_column_a_failed_run_left(
    database_url: str, migrate: Callable[..., None]
) -> None:
    engine = create_engine(database_url, poolclass=NullPool)
    migrate(database_url, "0002")
    insert_jobs(engine, ["https://example.com/a", "https://example.com/a"])
    with engine.begin() as connection:
        # What the first 0003 left on SQLite: the column, no index, version still 0002.
        connection.execute(text("ALTER TABLE jobs ADD COLUMN canonical_url VARCHAR(500)"))
    migrate(database_url, "0003")
    assert canonical_urls(engine) == [(1, "https://example.com/a"), (2, "https://example.com/a#dup-2")]
    engine.dispose()


def test_0004_job_tags_round_trip(
    database_url: str, migrate: Callable[..., None], make_alembic_config: Callable[[str], Config]
) -> None:
    engine = create_engine(database_url, poolclass=NullPool)
    migrate(database_url, "head")
    assert "job_tags" in inspect(engine).get_table_names()
    command.downgrade(make_alembic_config(database_url), "0003")
    assert "job_tags" not in inspect(engine).get_table_names()
    migrate(database_url, "head")
    assert "job_tags" in inspect(engine).get_table_names()
    engine.dispose()
