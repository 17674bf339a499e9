from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from subprocess import CompletedProcess

from jobapp.activity import count_active_users
from jobapp.models import Application, Document, Job, OutboxMessage, UserSession
from jobapp.seed import PROFILES, seed
from sqlalchemy import create_engine, func, select
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool

RunModule = Callable[..., CompletedProcess[str]]
NOW = datetime(2025, 6, 1, 12, 0, 0)


def seeded(url: str, profile: str, data_dir: Path) -> Session:
    engine = create_engine(url, poolclass=NullPool)
    session = Session(engine)
    with session.begin():
        seed(session, PROFILES[profile], data_dir, now=NOW)
    return session


def counts(session: Session) -> dict[str, int]:
    return {
        model.__tablename__: session.scalar(select(func.count()).select_from(model)) or 0
        for model in (Job, Application, Document, OutboxMessage, UserSession)
    }


def duplicated_urls(session: Session) -> list[str]:
    query = select(Job.source_url).group_by(Job.source_url).having(func.count() > 1)
    return list(session.scalars(query))


def test_staging_is_clean(migrated_url: str, data_dir: Path) -> None:
    with seeded(migrated_url, "staging", data_dir) as session:
        assert counts(session) == {
            "jobs": 20,
            "applications": 30,
            "documents": 0,
            "outbox": 12,
            "user_sessions": 8,
        }
        assert duplicated_urls(session) == []
        assert session.scalar(select(func.count()).where(Job.company.is_(None))) == 0
        urls = list(session.scalars(select(Job.source_url)))
        assert len({url.lower() for url in urls}) == len(urls)
        assert count_active_users(session, now=NOW) == 3


def test_production_carries_legacy_rows(migrated_url: str, data_dir: Path) -> None:
    with seeded(migrated_url, "production", data_dir) as session:
        assert counts(session) == {
            "jobs": 200,
            "applications": 400,
            "documents": 40,
            "outbox": 120,
            "user_sessions": 60,
        }
        duplicates = duplicated_urls(session)
        assert len(duplicates) == 5
        for url in duplicates:
            assert session.scalar(select(func.count()).where(Job.source_url == url)) == 2
        assert session.scalar(select(func.count()).where(Job.company.is_(None))) == 10
        assert count_active_users(session, now=NOW) == 12
        for document in session.scalars(select(Document)):
            assert (data_dir / document.path).is_file()


def test_seeding_is_idempotent(migrated_url: str, data_dir: Path) -> None:
    with seeded(migrated_url, "staging", data_dir) as session:
        before = counts(session)
        assert seed(session, PROFILES["production"], data_dir) is None
        session.commit()
        assert counts(session) == before


def test_seeding_is_deterministic(database_url: str, tmp_path: Path, migrate: Callable[[str], None]) -> None:
    other_url = f"sqlite:///{tmp_path / 'other.db'}"
    rows = []
    for url in (database_url, other_url):
        migrate(url)
        with seeded(url, "production", tmp_path / "data") as session:
            rows.append(
                [
                    (job.id, job.source_url, job.title, job.company, job.location, job.created_at)
                    for job in session.scalars(select(Job).order_by(Job.id))
                ]
                + [
                    (a.id, a.job_id, a.score)
                    for a in session.scalars(select(Application).order_by(Application.id))
                ]
            )
    assert rows[0] == rows[1]


def test_command_line(tmp_path: Path, migrate: Callable[[str], None], run_module: RunModule) -> None:
    # The seed itself runs on both databases above; this checks the command's wiring.
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    env = {"JOBAPP_DATABASE_URL": url, "JOBAPP_DATA_DIR": str(tmp_path / "data")}
    refused = run_module("jobapp.seed", "--profile", "production", env=env)
    assert refused.returncode != 0
    assert "alembic upgrade head" in refused.stderr
    migrate(url)
    first = run_module("jobapp.seed", "--profile", "staging", env=env)
    assert first.returncode == 0, first.stderr
    assert "seeded staging: 20 jobs" in first.stdout
    again = run_module("jobapp.seed", "--profile", "staging", env=env)
    assert again.returncode == 0 and "nothing seeded" in again.stdout
